using BlockMirror.Core;

namespace BlockMirror.Api.Options;

/// <summary>Bounds on what requests may make the block layer hold (<c>Limits</c> section).</summary>
public sealed class BitmapLimitsOptions
{
    public const string Section = "Limits";

    /// <summary>
    /// Bytes all dirty bitmaps may take together (persistent ones count twice: the journal keeps a
    /// shadow; mirror jobs' working bitmaps and a transaction's backups count too). Beyond it a request
    /// is refused with 409 <c>bitmap-memory-exceeded</c>.
    /// </summary>
    public long BitmapMemoryBytes { get; set; } = BlockLayer.DefaultBitmapMemoryBudget;

    /// <summary>Actions one transaction may hold; more are refused with 400 <c>too-many-actions</c>.</summary>
    public int MaxTransactionActions { get; set; } = BlockLayer.DefaultMaxTransactionActions;
}
