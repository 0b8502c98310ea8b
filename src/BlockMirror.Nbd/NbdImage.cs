using BlockMirror.Core.Images;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// The <c>nbd</c> driver: an <see cref="IBlockImage"/> over a remote NBD export, through one
/// <see cref="NbdClient"/> connection (requests are pipelined on it). Block status comes from
/// <c>base:allocation</c> when the server offers it; otherwise everything reports as data.
/// </summary>
public sealed class NbdImage : IBlockImage
{
    private readonly NbdClient _client;
    private readonly bool _hasAllocation;

    /// <summary>Wraps a connected client; the image owns it from now on.</summary>
    public NbdImage(NbdClient client, NbdUri uri, bool readOnly)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(uri);
        _client = client;
        Location = uri.Text;
        ReadOnly = readOnly || client.ReadOnly;
        _hasAllocation = client.MetaContexts.ContainsKey(NbdConstants.BaseAllocation);
    }

    /// <summary>Connects to <paramref name="uri"/> and wraps the connection.</summary>
    public static async Task<NbdImage> OpenAsync(string uri, bool readOnly, NbdClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        var parsed = NbdUri.Parse(uri);
        var client = await NbdClient.ConnectAsync(parsed, options, cancellationToken).ConfigureAwait(false);
        return new NbdImage(client, parsed, readOnly);
    }

    /// <summary>The connection, for diagnostics and tests.</summary>
    public NbdClient Client => _client;

    /// <inheritdoc />
    public long Size => _client.Size;

    /// <inheritdoc />
    public bool ReadOnly { get; }

    /// <inheritdoc />
    public string Location { get; }

    /// <summary>Not known for a remote export: reported as 0.</summary>
    public long AllocatedBytes => 0;

    /// <summary>False: nothing is known about what a remote export contains.</summary>
    public bool HasZeroInit => false;

    /// <inheritdoc />
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        buffer.Length == 0 ? ValueTask.CompletedTask : _client.ReadAsync(offset, buffer, cancellationToken);

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        if (data.Length == 0)
            return ValueTask.CompletedTask;
        return _client.WriteAsync(offset, data, fua && _client.CanFua, cancellationToken);
    }

    /// <inheritdoc />
    public async ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        if (length <= 0)
            return;
        if (_client.CanWriteZeroes)
        {
            await _client.WriteZeroesAsync(offset, length, noHole: !mayUnmap, cancellationToken: cancellationToken).ConfigureAwait(false);
            return;
        }
        // A server without WRITE_ZEROES gets real zeroes, a bounded buffer at a time.
        var chunk = (int)Math.Min(length, Math.Min(_client.MaximumBlockSize, 4 * 1024 * 1024));
        var zeroes = new byte[chunk];
        for (var done = 0L; done < length; done += chunk)
        {
            var len = (int)Math.Min(chunk, length - done);
            await _client.WriteAsync(offset + done, zeroes.AsMemory(0, len), cancellationToken: cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        // Discard is advisory: a server that cannot trim is allowed to keep the data.
        return length <= 0 || !_client.CanTrim ? ValueTask.CompletedTask : _client.TrimAsync(offset, length, cancellationToken: cancellationToken);
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        _client.CanFlush && !ReadOnly ? _client.FlushAsync(cancellationToken) : ValueTask.CompletedTask;

    /// <inheritdoc />
    public async ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        if (!_hasAllocation || maxLength <= 0)
            return new ImageExtent(offset, Math.Max(maxLength, 0), ExtentKind.Data);
        var status = await _client.BlockStatusAsync(offset, maxLength, requestOne: false, cancellationToken).ConfigureAwait(false);
        if (!status.TryGetValue(NbdConstants.BaseAllocation, out var extents) || extents.Count == 0)
            return new ImageExtent(offset, maxLength, ExtentKind.Data);
        // Only ZERO promises zeroes; a HOLE without ZERO may read as anything, so it is data.
        var kind = KindOf(extents[0].Flags);
        var length = 0L;
        foreach (var e in extents)
        {
            if (KindOf(e.Flags) != kind || e.Length == 0)
                break;
            length += e.Length;
        }
        return new ImageExtent(offset, Math.Clamp(length, 1, maxLength), kind);
    }

    private static ExtentKind KindOf(uint flags) => (flags & NbdConstants.StateZero) != 0 ? ExtentKind.Zero : ExtentKind.Data;

    private void ThrowIfReadOnly()
    {
        if (ReadOnly)
            throw new NbdException(NbdConstants.EPERM, "the image is opened read-only", "write");
    }

    /// <summary>Disconnects from the server.</summary>
    public ValueTask DisposeAsync() => _client.DisposeAsync();
}
