using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>
/// The <c>nbd</c> driver: an <see cref="IBlockImage"/> over a remote NBD export, through one
/// <see cref="NbdClient"/> connection (requests are pipelined on it). Block status comes from
/// <c>base:allocation</c> when the server offers it; otherwise everything reports as data.
/// A connection that is gone is replaced by a new one at the next request, so the node stays
/// usable: one abandoned by a cancelled request (a mirror's force cancel against a server that
/// stopped answering), and one the server or the network broke (the other host killed and
/// restarted), as QEMU's nbd driver reconnects. The request that met the break fails (its caller's
/// error policy decides); only the requests another caller's cancel cut are run again.
/// </summary>
public sealed class NbdImage : IBlockImage
{
    private readonly SemaphoreSlim _reconnect = new(1, 1);
    private readonly NbdUri _uri;
    private readonly bool _hasAllocation;
    private NbdClient _client;
    private int _disposed;

    /// <summary>Wraps a connected client; the image owns it from now on.</summary>
    public NbdImage(NbdClient client, NbdUri uri, bool readOnly)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentNullException.ThrowIfNull(uri);
        _client = client;
        _uri = uri;
        Location = uri.Text;
        Size = client.Size;
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

    /// <summary>Connections are TLS (the URI is nbds): every reconnect does TLS again.</summary>
    public bool Tls => _uri.Tls;

    /// <summary>The current connection, for diagnostics, tests and the NBD server's loopback check.</summary>
    public NbdClient Client => Volatile.Read(ref _client);

    /// <inheritdoc />
    public long Size { get; }

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
        buffer.Length == 0 ? ValueTask.CompletedTask : RunAsync(c => c.ReadAsync(offset, buffer, cancellationToken), cancellationToken);

    /// <inheritdoc />
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        return data.Length == 0 ? ValueTask.CompletedTask : RunAsync(c => c.WriteAsync(offset, data, fua && c.CanFua, cancellationToken), cancellationToken);
    }

    /// <inheritdoc />
    public ValueTask WriteZeroesAsync(long offset, long length, bool mayUnmap, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        return length <= 0 ? ValueTask.CompletedTask : RunAsync(c => WriteZeroesAsync(c, offset, length, mayUnmap, cancellationToken), cancellationToken);
    }

    private static async ValueTask WriteZeroesAsync(NbdClient client, long offset, long length, bool mayUnmap, CancellationToken cancellationToken)
    {
        if (client.CanWriteZeroes)
        {
            await client.WriteZeroesAsync(offset, length, noHole: !mayUnmap, cancellationToken: cancellationToken).ConfigureAwait(false);
            return;
        }
        // A server without WRITE_ZEROES gets real zeroes, a bounded buffer at a time.
        var chunk = (int)Math.Min(length, Math.Min(client.MaximumBlockSize, 4 * 1024 * 1024));
        var zeroes = new byte[chunk];
        for (var done = 0L; done < length; done += chunk)
        {
            var len = (int)Math.Min(chunk, length - done);
            await client.WriteAsync(offset + done, zeroes.AsMemory(0, len), cancellationToken: cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    public ValueTask DiscardAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        ThrowIfReadOnly();
        // Discard is advisory: a server that cannot trim is allowed to keep the data.
        return length <= 0 ? ValueTask.CompletedTask
            : RunAsync(c => c.CanTrim ? c.TrimAsync(offset, length, cancellationToken: cancellationToken) : ValueTask.CompletedTask, cancellationToken);
    }

    /// <inheritdoc />
    public ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        ReadOnly ? ValueTask.CompletedTask : RunAsync(c => c.CanFlush ? c.FlushAsync(cancellationToken) : ValueTask.CompletedTask, cancellationToken);

    /// <inheritdoc />
    public async ValueTask<ImageExtent> GetBlockStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
    {
        if (!_hasAllocation || maxLength <= 0)
            return new ImageExtent(offset, Math.Max(maxLength, 0), ExtentKind.Data);
        IReadOnlyDictionary<string, IReadOnlyList<NbdExtent>>? status = null;
        await RunAsync(async c => status = await c.BlockStatusAsync(offset, maxLength, requestOne: false, cancellationToken).ConfigureAwait(false), cancellationToken).ConfigureAwait(false);
        if (status is null || !status.TryGetValue(NbdConstants.BaseAllocation, out var extents) || extents.Count == 0)
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

    /// <summary>
    /// Runs one operation on the current connection. An operation that fails because another
    /// caller's cancelled request cut the connection under it is run again on a new one: it was
    /// not cancelled itself, and every NBD command may be repeated (a write of the same bytes to
    /// the same place, a zero write, a trim, a flush, a read).
    /// </summary>
    private async ValueTask RunAsync(Func<NbdClient, ValueTask> operation, CancellationToken cancellationToken)
    {
        while (true)
        {
            var client = await ClientAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                await operation(client).ConfigureAwait(false);
                return;
            }
            catch (IOException) when (client.Abandoned && !cancellationToken.IsCancellationRequested)
            {
            }
        }
    }

    /// <summary>
    /// The connection to use: the current one, or, once it is closed (abandoned by a cancelled
    /// request, or broken by the server or the network), a new one to the same export, which must
    /// still be what was opened: same size, writable if we write. A server that is still away fails
    /// this request with its connect error, and the next request tries again (QEMU's nbd driver
    /// with reconnect-delay 0: no request waits for the server to come back).
    /// </summary>
    private ValueTask<NbdClient> ClientAsync(CancellationToken cancellationToken)
    {
        var client = Volatile.Read(ref _client);
        return client.IsClosed && Volatile.Read(ref _disposed) == 0 ? ReconnectAsync(cancellationToken) : ValueTask.FromResult(client);
    }

    private async ValueTask<NbdClient> ReconnectAsync(CancellationToken cancellationToken)
    {
        await _reconnect.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var old = Volatile.Read(ref _client);
            if (!old.IsClosed)
                return old;
            NbdClient fresh;
            try
            {
                fresh = await NbdClient.ConnectAsync(_uri, old.Options, cancellationToken).ConfigureAwait(false);
            }
            catch (BlockException e)
            {
                // An I/O error of this image, not a refusal of the request.
                throw new IOException(e.Message, e);
            }
            if (fresh.Size != Size || (fresh.ReadOnly && !ReadOnly))
            {
                await fresh.DisposeAsync().ConfigureAwait(false);
                throw new IOException($"NBD export '{_uri}' changed while reconnecting (size {fresh.Size}, read-only {fresh.ReadOnly})");
            }
            Volatile.Write(ref _client, fresh);
            await old.DisposeAsync().ConfigureAwait(false);
            return fresh;
        }
        finally
        {
            _reconnect.Release();
        }
    }

    private void ThrowIfReadOnly()
    {
        if (ReadOnly)
            throw new NbdException(NbdConstants.EPERM, "the image is opened read-only", "write");
    }

    /// <summary>Disconnects from the server.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        // A reconnect in progress finishes first, so its connection is the one closed here.
        await _reconnect.WaitAsync().ConfigureAwait(false);
        try
        {
            await Volatile.Read(ref _client).DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            _reconnect.Release();
        }
    }
}
