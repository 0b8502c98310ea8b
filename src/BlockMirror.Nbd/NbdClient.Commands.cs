using System.Buffers;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The commands callers issue, and how a request is sent, awaited, or abandoned.</summary>
public sealed partial class NbdClient
{
    /// <summary>Reads <c>buffer.Length</c> bytes at <paramref name="offset"/> (split into requests of at most <see cref="MaximumBlockSize"/>, sent together).</summary>
    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        SplitAsync(offset, buffer.Length, MaximumBlockSize, (o, start, len) =>
            ExecuteAsync(NbdConstants.CmdRead, 0, o, (uint)len, default, buffer.Slice(start, len), "read", cancellationToken));

    /// <summary>Writes <paramref name="data"/> at <paramref name="offset"/>; with <paramref name="fua"/> durable on return.</summary>
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua = false, CancellationToken cancellationToken = default) =>
        SplitAsync(offset, data.Length, MaximumBlockSize, (o, start, len) =>
            ExecuteAsync(NbdConstants.CmdWrite, fua ? NbdConstants.CmdFlagFua : (ushort)0, o, (uint)len, data.Slice(start, len), default, "write", cancellationToken));

    /// <summary>NBD_CMD_FLUSH.</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken = default) =>
        await ExecuteAsync(NbdConstants.CmdFlush, 0, 0, 0, default, default, "flush", cancellationToken).ConfigureAwait(false);

    /// <summary>NBD_CMD_TRIM (split into 1 GiB requests).</summary>
    public async ValueTask TrimAsync(long offset, long length, bool fua = false, CancellationToken cancellationToken = default)
    {
        for (var done = 0L; done < length; done += MaxNonDataRequest)
        {
            var len = Math.Min(MaxNonDataRequest, length - done);
            await ExecuteAsync(NbdConstants.CmdTrim, fua ? NbdConstants.CmdFlagFua : (ushort)0, offset + done, (uint)len, default, default, "trim", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>NBD_CMD_WRITE_ZEROES; <paramref name="noHole"/> asks the server not to deallocate.</summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, bool noHole = false, bool fua = false, CancellationToken cancellationToken = default)
    {
        var flags = (ushort)((noHole ? NbdConstants.CmdFlagNoHole : 0) | (fua ? NbdConstants.CmdFlagFua : 0));
        for (var done = 0L; done < length; done += MaxNonDataRequest)
        {
            var len = Math.Min(MaxNonDataRequest, length - done);
            await ExecuteAsync(NbdConstants.CmdWriteZeroes, flags, offset + done, (uint)len, default, default, "write-zeroes", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// NBD_CMD_BLOCK_STATUS over [offset, offset+length) (length capped at 1 GiB): the
    /// descriptors of every selected context, by context name. The server may describe only a
    /// prefix of the range.
    /// </summary>
    public async ValueTask<IReadOnlyDictionary<string, IReadOnlyList<NbdExtent>>> BlockStatusAsync(long offset, long length, bool requestOne = false, CancellationToken cancellationToken = default)
    {
        var len = (uint)Math.Clamp(length, 0, MaxNonDataRequest);
        var pending = await ExecuteAsync(NbdConstants.CmdBlockStatus, requestOne ? NbdConstants.CmdFlagReqOne : (ushort)0, offset, len, default, default, "block-status", cancellationToken).ConfigureAwait(false);
        var result = new Dictionary<string, IReadOnlyList<NbdExtent>>(StringComparer.Ordinal);
        foreach (var (id, extents) in pending.Status ?? [])
            result[_contextNames.GetValueOrDefault(id) ?? $"#{id}"] = extents;
        return result;
    }

    /// <summary>Sends an arbitrary request (tests of server validation); throws <see cref="NbdException"/> on an error reply.</summary>
    internal async ValueTask RawAsync(ushort type, ushort flags, ulong offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, CancellationToken cancellationToken = default) =>
        await ExecuteAsync(type, flags, (long)offset, length, payload, readBuffer, $"command {type}", cancellationToken, rawOffset: offset).ConfigureAwait(false);

    private static async ValueTask SplitAsync(long offset, int length, uint maxChunk, Func<long, int, int, ValueTask<NbdPendingRequest>> send)
    {
        if (length <= maxChunk)
        {
            await send(offset, 0, length).ConfigureAwait(false);
            return;
        }
        var tasks = new List<Task>();
        for (var start = 0; start < length; start += (int)maxChunk)
            tasks.Add(send(offset + start, start, (int)Math.Min(maxChunk, length - start)).AsTask());
        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    private async ValueTask<NbdPendingRequest> ExecuteAsync(ushort type, ushort flags, long offset, uint length, ReadOnlyMemory<byte> payload, Memory<byte> readBuffer, string operation, CancellationToken cancellationToken, ulong? rawOffset = null)
    {
        ThrowIfClosed();
        await _inFlight.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var pending = new NbdPendingRequest(type, offset, length, readBuffer);
            var cookie = (ulong)Interlocked.Increment(ref _nextCookie);
            lock (_pending)
            {
                ThrowIfClosed();
                _pending.Add(cookie, pending);
            }
            await SendRequestAsync(type, flags, cookie, rawOffset ?? (ulong)offset, length, payload, cancellationToken).ConfigureAwait(false);
            try
            {
                await pending.Completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                await AbandonAsync().ConfigureAwait(false);
                throw;
            }
            if (pending.Errno != 0)
                throw new NbdException(pending.Errno, pending.ErrorMessage, operation);
            return pending;
        }
        finally
        {
            _inFlight.Release();
        }
    }

    private async ValueTask SendRequestAsync(ushort type, ushort flags, ulong cookie, ulong offset, uint length, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        // Small payloads go in the same write as their header (one segment on the wire).
        var inline = payload.Length <= NbdConstants.StreamBufferBytes ? payload.Length : 0;
        var message = ArrayPool<byte>.Shared.Rent(NbdConstants.RequestHeaderSize + inline);
        try
        {
            NbdWire.WriteRequest(message, flags, type, cookie, offset, length);
            if (inline > 0)
                payload.Span.CopyTo(message.AsSpan(NbdConstants.RequestHeaderSize));
            try
            {
                await _sendLock.WaitAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                Complete(cookie);
                throw;
            }
            try
            {
                // Cancellable even half-sent (a server that stops reading fills the socket): the
                // stream is then out of step, so the connection goes.
                await _output.WriteAsync(message.AsMemory(0, NbdConstants.RequestHeaderSize + inline), ct).ConfigureAwait(false);
                if (inline == 0 && payload.Length > 0)
                    await _output.WriteAsync(payload, ct).ConfigureAwait(false);
                if (_transport is not null)
                    await _output.FlushAsync(ct).ConfigureAwait(false); // the records gathered under the TLS session
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                CutConnection();
                throw;
            }
            catch (Exception e)
            {
                Break(new IOException($"NBD connection to '{_uri}' failed: {e.Message}", e));
                throw new IOException($"NBD connection to '{_uri}' failed: {e.Message}", e);
            }
            finally
            {
                _sendLock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    private void Complete(ulong cookie)
    {
        NbdPendingRequest? pending;
        lock (_pending)
        {
            if (!_pending.Remove(cookie, out pending))
                return;
        }
        pending.Completion.TrySetResult();
    }

    /// <summary>Cuts the connection after a cancelled request and waits until the reader has stopped, so no reply lands in a buffer its caller has given up.</summary>
    private async ValueTask AbandonAsync()
    {
        CutConnection();
        if (_reader is { } reader)
            await reader.ConfigureAwait(false);
    }
}
