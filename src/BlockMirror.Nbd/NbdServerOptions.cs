namespace BlockMirror.Nbd;

/// <summary>Settings of an <see cref="NbdServer"/>.</summary>
public sealed class NbdServerOptions
{
    /// <summary>Where to listen; default 127.0.0.1:10809 (the IANA NBD port).</summary>
    public NbdListenAddress Listen { get; set; } = NbdListenAddress.Tcp("127.0.0.1", 10809);

    /// <summary>Requests of one connection processed concurrently; the reader waits when all are busy.</summary>
    public int MaxInFlightPerConnection { get; set; } = 32;

    /// <summary>Connections served at once; further ones are closed at accept.</summary>
    public int MaxConnections { get; set; } = 1024;

    /// <summary>Most descriptors in one block-status chunk (the spec lets a server answer a prefix of the range).</summary>
    public int MaxBlockStatusExtents { get; set; } = 8192;

    /// <summary>Time a client has to finish option haggling; a silent or slow client is dropped after it.</summary>
    public TimeSpan HandshakeTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Answer structured reads with hole chunks for ranges block status reports as zero.</summary>
    public bool SparseReads { get; set; } = true;

    /// <summary>How long <see cref="NbdServer.StopAsync"/> lets in-flight requests finish before cutting connections.</summary>
    public TimeSpan StopGracePeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Called once per transmission request as it is read (export name, command name such as
    /// <c>read</c> or <c>block-status</c>), refused ones included; for metrics. Runs on the
    /// connection's reader, so it must be cheap. Null = not counted.
    /// </summary>
    public Action<string, string>? RequestReceived { get; set; }

    /// <summary>
    /// TLS credentials and client policy; null serves plain NBD. With them, a client must start
    /// TLS (NBD_OPT_STARTTLS) before anything else: other options get NBD_REP_ERR_TLS_REQD.
    /// </summary>
    public NbdServerTls? Tls { get; set; }
}
