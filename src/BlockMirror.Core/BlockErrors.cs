
namespace BlockMirror.Core;

/// <summary>
/// Every refusal the block layer makes, with QEMU's sentence where QEMU has one.
/// Callers throw through these helpers so codes and wording stay in one place.
/// </summary>
public static class BlockErrors
{
    public static BlockException Invalid(string code, string message) => new(BlockErrorKind.Invalid, code, message);
    public static BlockException NotFound(string code, string message) => new(BlockErrorKind.NotFound, code, message);
    public static BlockException Conflict(string code, string message) => new(BlockErrorKind.Conflict, code, message);

    public static BlockException InvalidName(string what, string name) =>
        Invalid("invalid-name", $"Invalid {what} name '{Shorten(name)}': 1-128 characters of [A-Za-z0-9._:-], starting with a letter, digit or '_'");

    public static BlockException NodeNotFound(string node) =>
        NotFound("node-not-found", $"Cannot find device='{node}' nor node-name='{node}'");

    public static BlockException NodeExists(string node) =>
        Conflict("node-exists", $"Duplicate nodes with node-name='{node}'");

    public static BlockException NodeBusy(string node, string reason) =>
        Conflict("node-busy", $"Node '{node}' is busy: {reason}");

    public static BlockException NodeReadOnly(string node) =>
        Conflict("node-read-only", $"Node '{node}' is read-only");

    public static BlockException ImageReplaced(string node, string reason) =>
        Conflict("image-replaced", $"Node '{node}' cannot be used: {reason}; remove the node and add it again");

    public static BlockException BitmapNotFound(string name) =>
        NotFound("bitmap-not-found", $"Dirty bitmap '{name}' not found");

    public static BlockException BitmapExists(string name) =>
        Conflict("bitmap-exists", $"Bitmap already exists: {name}");

    public static BlockException BitmapBusy(string name) =>
        Conflict("bitmap-busy", $"Bitmap '{name}' is currently in use by another operation and cannot be used");

    public static BlockException BitmapReadOnly(string name) =>
        Conflict("bitmap-read-only", $"Bitmap '{name}' is readonly and cannot be modified");

    public static BlockException BitmapInconsistent(string name) =>
        Conflict("bitmap-inconsistent", $"Bitmap '{name}' is inconsistent and cannot be used. Try removing it (DELETE the bitmap) to delete it");

    public static BlockException BitmapDisabled(string name) =>
        Conflict("bitmap-disabled", $"Bitmap '{name}' is not enabled");

    public static BlockException InvalidGranularity(string message) =>
        Invalid("invalid-granularity", message);

    public static BlockException OutOfRange(long offset, long length, long size) =>
        Invalid("out-of-range", $"Range [{offset}, +{length}) is outside the node's size {size}");

    public static BlockException SizeMismatch(long destination, long source) =>
        Invalid("size-mismatch", $"Bitmaps are of different sizes (destination size is {destination}, source size is {source}) and can't be merged");

    public static BlockException BitmapTooLarge(string message) =>
        Invalid("bitmap-too-large", message);

    public static BlockException BitmapMemoryExceeded(long needed, long inUse, long budget) =>
        Conflict("bitmap-memory-exceeded",
            $"Not enough bitmap memory: the operation needs {needed} bytes, {inUse} of the budget of {budget} bytes are in use (Limits:BitmapMemoryBytes)");

    public static BlockException TooManyActions(int count, int max) =>
        Invalid("too-many-actions", $"A transaction takes at most {max} actions, got {count} (Limits:MaxTransactionActions)");

    /// <summary>Keeps client-supplied text in messages short (a hostile name can be megabytes).</summary>
    public static string Shorten(string text) =>
        text.Length <= MaxQuotedLength ? text : string.Concat(text.AsSpan(0, MaxQuotedLength - Ellipsis.Length), Ellipsis);

    /// <summary>The longest client-supplied text a message quotes whole (<see cref="Shorten"/>).</summary>
    private const int MaxQuotedLength = 64;

    private const string Ellipsis = "...";
}
