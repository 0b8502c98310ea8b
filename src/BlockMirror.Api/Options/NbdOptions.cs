namespace BlockMirror.Api.Options;

/// <summary>The NBD server (<c>Nbd</c> section).</summary>
public sealed class NbdOptions
{
    public const string Section = "Nbd";

    /// <summary><c>host:port</c>, or <c>unix:/path.sock</c>; empty turns the server off.</summary>
    public string Listen { get; set; } = "127.0.0.1:10809";

    /// <summary>NBD connections served at once; further ones are closed at accept (counted in the descriptor budget, <see cref="LimitsOptions"/>).</summary>
    public int MaxConnections { get; set; } = 1024;

    /// <summary>Time a client has to finish the handshake (option haggling); a silent client is dropped after it.</summary>
    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>TLS of the NBD server (<c>Nbd:Tls</c>); off while no certificate is set.</summary>
    public NbdTlsOptions Tls { get; set; } = new();

    /// <summary>How this host connects to other NBD servers (<c>Nbd:Client</c>, for <c>driver: nbd</c> nodes).</summary>
    public NbdClientSection Client { get; set; } = new();
}
