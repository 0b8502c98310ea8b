# syntax=docker/dockerfile:1
# Multi-stage build: the SDK image publishes the service for the target platform's runtime
# identifier; the ASP.NET runtime image runs it as a non-root user with /data as the volume for
# the SQLite database, the bitmap journal and the image root.
#
#   docker build -t blockmirror .
#   docker run -d --name blockmirror -p 5080:5080 -v bm-data:/data -e Auth__ApiKeys__0=<key> blockmirror
#
# docs/configuration.md ("Running in a container") says how to reach the NBD server from outside.

# The build runs on the builder's own platform (no emulation) and publishes for the target's.
FROM --platform=$BUILDPLATFORM mcr.microsoft.com/dotnet/sdk:10.0 AS build
ARG TARGETARCH
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props BlockMirror.Api.sln ./
COPY .config .config
COPY src src
# The locked restore proves the lock files match the projects; the publish then restores the
# target's runtime-specific assets (the same package versions) and leaves out the other
# platforms' native SQLite libraries. -a takes Docker's arch names (amd64, arm64).
RUN dotnet restore src/BlockMirror.Api/BlockMirror.Api.csproj --locked-mode \
 && dotnet publish src/BlockMirror.Api/BlockMirror.Api.csproj -c Release -a "${TARGETARCH:-amd64}" \
      --self-contained false -o /app

FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN groupadd --system blockmirror && useradd --system --gid blockmirror --home-dir /data blockmirror \
 && mkdir -p /data/images && chown -R blockmirror:blockmirror /data
WORKDIR /app
COPY --from=build /app ./
COPY appsettings.json ./
USER blockmirror
VOLUME ["/data"]
# In a container the REST API must listen beyond loopback, which requires API keys
# (Auth__ApiKeys__0=...; the start is refused with exit code 78 without one). NBD stays on the
# container's loopback unless Nbd__Listen is set.
ENV Storage__Root=/data/images \
    ConnectionStrings__BlockMirror="Data Source=/data/blockmirror.db" \
    Urls=http://0.0.0.0:5080
# Only the REST API is reachable from outside by default; NBD (10809) listens on the container's
# loopback, so publishing it would lead nowhere until Nbd__Listen says otherwise.
EXPOSE 5080
# /healthz needs no key and answers 503 while the database or the bitmap journal cannot be
# written. The image has no curl: bash's /dev/tcp sends the request. A changed Urls port needs
# --health-cmd (or HEALTHCHECK NONE) at docker run.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# Exec form: the service is PID 1 and receives docker stop's SIGTERM itself (no shell in
# between). It handles it: event streams end, requests get 5 s, jobs stop, every node is
# checkpointed, exit code 0, well within docker stop's 10 s. It starts no child processes,
# so there is nothing for an init to reap.
ENTRYPOINT ["dotnet", "BlockMirror.Api.dll"]
