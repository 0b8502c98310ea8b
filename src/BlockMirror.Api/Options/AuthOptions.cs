namespace BlockMirror.Api.Options;

/// <summary>API keys (<c>Auth</c> section). Without keys the service listens on loopback only.</summary>
public sealed class AuthOptions
{
    public const string Section = "Auth";

    public string[] ApiKeys { get; set; } = [];

    /// <summary>With keys set, <c>/metrics</c> answers without one (for a scraper that cannot send a Bearer token). Default: a key is required.</summary>
    public bool AllowAnonymousMetrics { get; set; }

    /// <summary>With keys set, <c>/swagger</c> (UI and document) answers without one. Default: a key is required.</summary>
    public bool AllowAnonymousSwagger { get; set; }
}
