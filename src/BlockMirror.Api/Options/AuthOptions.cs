namespace BlockMirror.Api.Options;

/// <summary>API keys (<c>Auth</c> section). Without keys the service listens on loopback only.</summary>
public sealed class AuthOptions
{
    public const string Section = "Auth";

    public string[] ApiKeys { get; set; } = [];
}
