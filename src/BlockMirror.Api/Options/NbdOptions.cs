namespace BlockMirror.Api.Options;

/// <summary>The NBD server (<c>Nbd</c> section).</summary>
public sealed class NbdOptions
{
    public const string Section = "Nbd";

    /// <summary><c>host:port</c>, or <c>unix:/path.sock</c>; empty turns the server off.</summary>
    public string Listen { get; set; } = "127.0.0.1:10809";
}
