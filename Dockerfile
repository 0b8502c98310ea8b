# Multi-stage build: SDK image builds and publishes; the runtime image runs as a non-root user
# with /data as the volume for the SQLite database and the image root.
FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
COPY global.json Directory.Build.props Directory.Packages.props BlockMirror.Api.sln ./
COPY .config .config
COPY src src
RUN dotnet restore src/BlockMirror.Api/BlockMirror.Api.csproj --locked-mode \
 && dotnet publish src/BlockMirror.Api/BlockMirror.Api.csproj -c Release --no-restore -o /app

FROM mcr.microsoft.com/dotnet/aspnet:10.0
RUN groupadd --system blockmirror && useradd --system --gid blockmirror --home-dir /data blockmirror \
 && mkdir -p /data/images && chown -R blockmirror:blockmirror /data
WORKDIR /app
COPY --from=build /app ./
COPY appsettings.json ./
USER blockmirror
VOLUME ["/data"]
# In a container the service must listen beyond loopback, which requires API keys
# (Auth__ApiKeys__0=...); NBD stays on loopback unless Nbd__Listen is set.
ENV Storage__Root=/data/images \
    ConnectionStrings__BlockMirror="Data Source=/data/blockmirror.db" \
    Urls=http://0.0.0.0:5080
EXPOSE 5080 10809
ENTRYPOINT ["dotnet", "BlockMirror.Api.dll"]
