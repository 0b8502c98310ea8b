namespace BlockMirror.Api.Infrastructure;

/// <summary>An address the REST server will listen on, and the setting it comes from (for the refusal's message).</summary>
/// <param name="Url">As configured, e.g. <c>http://0.0.0.0:5080</c>, <c>http://*:8080</c>, <c>http://unix:/run/bm.sock</c>.</param>
/// <param name="Setting">The configuration key, e.g. <c>Urls</c>, <c>HTTP_PORTS</c>, <c>Kestrel:Endpoints:Api:Url</c>.</param>
public sealed record ListenAddress(string Url, string Setting);
