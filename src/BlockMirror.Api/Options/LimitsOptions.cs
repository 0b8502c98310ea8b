using BlockMirror.Core;

namespace BlockMirror.Api.Options;

/// <summary>
/// Bounds on what clients may make the service hold (<c>Limits</c> section): bitmap memory, actions
/// per transaction, connections of the REST server and the file descriptors kept for the data. Every connection holds a descriptor; without a cap, idle connections alone exhaust
/// RLIMIT_NOFILE and the runtime dies when it can no longer open a file. NBD's cap is
/// <see cref="NbdOptions.MaxConnections"/>.
/// </summary>
public sealed class LimitsOptions
{
    public const string Section = "Limits";

    /// <summary>HTTP connections open at once (Kestrel's MaxConcurrentConnections); more are closed at accept.</summary>
    public int MaxHttpConnections { get; set; } = 1024;

    /// <summary>HTTP connections upgraded to another protocol (Kestrel's MaxConcurrentUpgradedConnections; nothing upgrades today).</summary>
    public int MaxHttpUpgradedConnections { get; set; } = 16;

    /// <summary>Time a client has to send a request's headers once it started one (Kestrel's RequestHeadersTimeout).</summary>
    public TimeSpan HttpRequestHeadersTimeout { get; set; } = TimeSpan.FromSeconds(15);

    /// <summary>Time an idle HTTP connection is kept open, before and between requests (Kestrel's KeepAliveTimeout).</summary>
    public TimeSpan HttpKeepAliveTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Descriptors kept out of the connection budget for images, the database, the journal and the
    /// runtime itself: HTTP + upgraded + NBD connections must fit in RLIMIT_NOFILE minus this.
    /// </summary>
    public int ReservedFileDescriptors { get; set; } = 1024;

    /// <summary>
    /// Bytes all dirty bitmaps may take together (persistent ones count twice: the journal keeps a
    /// shadow; mirror jobs' working bitmaps and a transaction's backups count too). Beyond it a request
    /// is refused with 409 <c>bitmap-memory-exceeded</c>.
    /// </summary>
    public long BitmapMemoryBytes { get; set; } = BlockLayer.DefaultBitmapMemoryBudget;

    /// <summary>Actions one transaction may hold; more are refused with 400 <c>too-many-actions</c>.</summary>
    public int MaxTransactionActions { get; set; } = BlockLayer.DefaultMaxTransactionActions;
}
