# Image for the spendstream worker and sink (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY spendstream ./spendstream
COPY schemas ./schemas
COPY streams ./streams
COPY sinks ./sinks
RUN pip install --no-cache-dir .
COPY examples ./examples
ENV SPENDSTREAM_DATA_DIR=/data
VOLUME /data
ENTRYPOINT ["spendstream"]
