namespace BlockMirror.Nbd;

/// <summary>How an <see cref="NbdClient"/> negotiates and behaves.</summary>
public sealed class NbdClientOptions
{
    /// <summary>Ask for structured replies (needed for block status and sparse reads).</summary>
    public bool StructuredReplies { get; set; } = true;

    /// <summary>Metadata context queries to select with NBD_OPT_SET_META_CONTEXT (default: base:allocation).</summary>
    public IReadOnlyList<string> MetaContexts { get; set; } = ["base:allocation"];

    /// <summary>Time allowed for connecting and negotiating.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>TLS credentials for <c>nbds</c> URIs (null = the system's trusted roots, no client certificate).</summary>
    public NbdClientTls? Tls { get; set; }

    /// <summary>Requests in flight on the connection at once; further callers wait.</summary>
    public int MaxInFlight { get; set; } = 64;
}
