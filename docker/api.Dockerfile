# The embcat API. torch comes from the CPU index (HPC sites use their own CUDA build instead).
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . /app
RUN pip install --no-cache-dir -e .
EXPOSE 8080
CMD ["sh", "-c", "embcat db upgrade && embcat serve --host 0.0.0.0 --port 8080"]
