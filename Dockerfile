# One image for every tripstream part; docker-compose.yml picks the command.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tripstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/target/release/tripstream /usr/local/bin/tripstream
COPY topics ./topics
COPY schemas ./schemas
ENTRYPOINT ["tripstream"]
