"""Catalogue library: database schema, STAC records, publishing, search and exchange."""
