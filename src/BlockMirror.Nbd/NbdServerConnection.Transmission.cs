using System.Buffers;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The transmission phase: request parsing, dispatch, and the commands.</summary>
internal sealed partial class NbdServerConnection
{
    private async Task TransmitAsync()
    {
        try
        {
            while (true)
            {
                if (!await TryReadExactAsync(_requestHeader, _stopReading.Token).ConfigureAwait(false))
                    break;
                var (magic, flags, type, cookie, offset, length) = NbdWire.ReadRequest(_requestHeader);
                if (magic != NbdConstants.RequestMagic)
                    throw new NbdProtocolException($"bad request magic 0x{magic:x8}");
                if (type == NbdConstants.CmdDisc)
                    break; // soft disconnect: finish what is in flight, then close
                _options.RequestReceived?.Invoke(_export?.Name ?? "", NbdConstants.CommandName(type));

                await _slots.WaitAsync(_stopReading.Token).ConfigureAwait(false);
                var dispatched = false;
                try
                {
                    dispatched = await AcceptAsync(flags, type, cookie, offset, length).ConfigureAwait(false);
                }
                finally
                {
                    if (!dispatched)
                        _slots.Release();
                }
            }
        }
        catch (Exception e) when (IsConnectionFailure(e) && e is not NbdProtocolException)
        {
        }
        finally
        {
            if (Interlocked.Decrement(ref _references) == 0)
                _drained.TrySetResult();
            // Requests already accepted still reply (up to the grace period of a close).
            await _drained.Task.ConfigureAwait(false);
        }
    }

    /// <summary>Validates a request, reads its payload, and starts it; false when it was answered here.</summary>
    private async ValueTask<bool> AcceptAsync(ushort flags, ushort type, ulong cookie, ulong offset, uint length)
    {
        var isWrite = type == NbdConstants.CmdWrite;
        if (isWrite && length > NbdConstants.MaxPayload)
        {
            // The payload follows whatever we answer; skip it to keep the stream framed, if sane.
            if (length > MaxSkippablePayload)
                throw new NbdProtocolException($"write of {length} bytes exceeds the maximum payload");
            await DiscardAsync(length, _stopReading.Token).ConfigureAwait(false);
            await ReplyErrorAsync(cookie, NbdConstants.EINVAL, $"request length {length} exceeds the maximum of {NbdConstants.MaxPayload}").ConfigureAwait(false);
            return false;
        }

        var error = Validate(flags, type, offset, length, out var message);
        if (error == 0 && !ExportStillExists())
        {
            error = NbdConstants.ESHUTDOWN;
            message = "the export was removed";
            BeginClose(TimeSpan.FromSeconds(5));
        }
        if (error != 0)
        {
            if (isWrite)
                await DiscardAsync(length, _stopReading.Token).ConfigureAwait(false);
            await ReplyErrorAsync(cookie, error, message).ConfigureAwait(false);
            return false;
        }

        byte[]? payload = null;
        if (isWrite && length > 0)
        {
            payload = ArrayPool<byte>.Shared.Rent((int)length);
            try
            {
                await ReadExactAsync(payload.AsMemory(0, (int)length), _stopReading.Token).ConfigureAwait(false);
            }
            catch
            {
                ArrayPool<byte>.Shared.Return(payload);
                throw;
            }
        }

        var request = new NbdServerRequest(flags, type, cookie, (long)offset, length, payload);
        Interlocked.Increment(ref _references);
        _ = Task.Run(() => RunRequestAsync(request));
        return true;
    }

    /// <summary>The errno for a request the export cannot take, or 0; checks flags, read-only, bounds and size.</summary>
    private uint Validate(ushort flags, ushort type, ulong offset, uint length, out string message)
    {
        message = "";
        ushort valid = NbdConstants.CmdFlagFua; // the spec requires FUA be accepted on every command
        var writes = false;
        var checkPayload = false;
        var pastEndError = NbdConstants.EINVAL;
        switch (type)
        {
            case NbdConstants.CmdRead:
                if (_structured)
                    valid |= NbdConstants.CmdFlagDf;
                checkPayload = true;
                break;
            case NbdConstants.CmdWrite:
                writes = true;
                checkPayload = true;
                pastEndError = NbdConstants.ENOSPC; // as the spec asks for writes beyond the end
                break;
            case NbdConstants.CmdFlush:
                break;
            case NbdConstants.CmdTrim:
                writes = true;
                break;
            case NbdConstants.CmdWriteZeroes:
                valid |= NbdConstants.CmdFlagNoHole;
                writes = true;
                pastEndError = NbdConstants.ENOSPC;
                break;
            case NbdConstants.CmdBlockStatus:
                valid |= NbdConstants.CmdFlagReqOne;
                if (_contexts.Count == 0)
                {
                    message = "no metadata context was negotiated";
                    return NbdConstants.EINVAL;
                }
                if (length == 0)
                {
                    message = "block status needs a non-zero length";
                    return NbdConstants.EINVAL;
                }
                break;
            default:
                message = $"unknown command {type}";
                return NbdConstants.EINVAL;
        }
        if ((flags & ~valid) != 0)
        {
            message = $"unsupported flags 0x{flags:x} for command {type}";
            return NbdConstants.EINVAL;
        }
        if (writes && _exportReadOnly)
        {
            message = "the export is read-only";
            return NbdConstants.EPERM;
        }
        if (checkPayload && length > NbdConstants.MaxPayload)
        {
            message = $"request length {length} exceeds the maximum of {NbdConstants.MaxPayload}";
            return NbdConstants.EINVAL;
        }
        if (type != NbdConstants.CmdFlush)
        {
            var size = (ulong)_node!.Size;
            if (offset > size || length > size - offset)
            {
                message = $"range [{offset}, +{length}) is beyond the export's size {size}";
                return pastEndError;
            }
        }
        return 0;
    }

    /// <summary>An export removed from the layer (or replaced under its name) stops serving at once.</summary>
    private bool ExportStillExists() => ReferenceEquals(_server.Layer.FindExport(_export!.Name), _export);

    private async Task RunRequestAsync(NbdServerRequest request)
    {
        try
        {
            switch (request.Type)
            {
                case NbdConstants.CmdRead:
                    await ReadCommandAsync(request).ConfigureAwait(false);
                    break;
                case NbdConstants.CmdBlockStatus:
                    await BlockStatusCommandAsync(request).ConfigureAwait(false);
                    break;
                default:
                    await WriteCommandAsync(request).ConfigureAwait(false);
                    break;
            }
        }
        catch (Exception e) when (IsConnectionFailure(e))
        {
            Break(e); // a reply could not be sent: the stream is no longer usable
        }
        catch (Exception e)
        {
            _server.Log($"NBD client {Peer}: request {request.Type} failed unexpectedly: {e}");
            Break(e);
        }
        finally
        {
            if (request.Payload is { } payload)
                ArrayPool<byte>.Shared.Return(payload);
            _slots.Release();
            if (Interlocked.Decrement(ref _references) == 0)
                _drained.TrySetResult();
        }
    }

    /// <summary>WRITE, FLUSH, TRIM, WRITE_ZEROES: all through the node's write path.</summary>
    private async Task WriteCommandAsync(NbdServerRequest request)
    {
        var length = request.Length;
        var node = _node!;
        var fua = (request.Flags & NbdConstants.CmdFlagFua) != 0;
        Exception? failure = null;
        try
        {
            // No cancellation once started: a write abandoned halfway would skip the bitmaps.
            switch (request.Type)
            {
                case NbdConstants.CmdWrite:
                    await node.WriteAsync(WriteRequest.ForData(request.Offset, request.Payload.AsMemory(0, (int)length), fua), CancellationToken.None).ConfigureAwait(false);
                    break;
                case NbdConstants.CmdFlush:
                    await node.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                    break;
                case NbdConstants.CmdTrim:
                    await node.WriteAsync(WriteRequest.ForDiscard(request.Offset, length), CancellationToken.None).ConfigureAwait(false);
                    if (fua)
                        await node.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                    break;
                case NbdConstants.CmdWriteZeroes:
                    var mayUnmap = (request.Flags & NbdConstants.CmdFlagNoHole) == 0;
                    await node.WriteAsync(WriteRequest.ForZeroes(request.Offset, length, mayUnmap, fua), CancellationToken.None).ConfigureAwait(false);
                    break;
            }
        }
        catch (Exception e)
        {
            failure = e;
        }
        if (failure is null)
            await ReplyOkAsync(request.Cookie).ConfigureAwait(false);
        else
            await ReplyFailureAsync(request, failure).ConfigureAwait(false);
    }

    private async Task ReadCommandAsync(NbdServerRequest request)
    {
        var node = _node!;
        var length = (int)request.Length; // validated: at most 32 MiB
        if (!_structured)
        {
            var message = ArrayPool<byte>.Shared.Rent(NbdConstants.SimpleReplyHeaderSize + length);
            try
            {
                try
                {
                    await node.ReadAsync(request.Offset, message.AsMemory(NbdConstants.SimpleReplyHeaderSize, length), _broken.Token).ConfigureAwait(false);
                }
                catch (Exception e) when (!_broken.IsCancellationRequested)
                {
                    await ReplyFailureAsync(request, e).ConfigureAwait(false);
                    return;
                }
                NbdWire.WriteSimpleReply(message, 0, request.Cookie);
                await SendAsync(message.AsMemory(0, NbdConstants.SimpleReplyHeaderSize + length)).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(message);
            }
            return;
        }

        if (length == 0)
        {
            await SendNoneChunkAsync(request.Cookie).ConfigureAwait(false);
            return;
        }

        var dontFragment = (request.Flags & NbdConstants.CmdFlagDf) != 0;
        if (!dontFragment && _options.SparseReads)
        {
            await SparseReadAsync(request).ConfigureAwait(false);
            return;
        }
        await DenseReadAsync(request).ConfigureAwait(false);
    }

    /// <summary>One OFFSET_DATA chunk with the whole range, read straight behind its header.</summary>
    private async Task DenseReadAsync(NbdServerRequest request)
    {
        const int head = NbdWire.DataChunkHeaderSize;
        var length = (int)request.Length;
        var message = ArrayPool<byte>.Shared.Rent(head + length);
        try
        {
            try
            {
                await _node!.ReadAsync(request.Offset, message.AsMemory(head, length), _broken.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (!_broken.IsCancellationRequested)
            {
                await ReplyFailureAsync(request, e).ConfigureAwait(false);
                return;
            }
            NbdWire.WriteDataChunkHeader(message, NbdConstants.ReplyFlagDone, request.Cookie, request.Offset, length);
            await SendAsync(message.AsMemory(0, head + length)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    /// <summary>
    /// Zero ranges (per block status) go as OFFSET_HOLE chunks, the rest as OFFSET_DATA, all in
    /// one buffer sent at once. Everything is read before anything is sent, so an I/O error is
    /// reported cleanly as the only chunk.
    /// </summary>
    private async Task SparseReadAsync(NbdServerRequest request)
    {
        var node = _node!;
        var extents = ArrayPool<ImageExtent>.Shared.Rent(MaxReadChunks);
        try
        {
            var count = 0;
            var end = request.Offset + request.Length;
            try
            {
                var pos = request.Offset;
                while (pos < end)
                {
                    if (count == MaxReadChunks - 1)
                    {
                        extents[count++] = new ImageExtent(pos, end - pos, ExtentKind.Data);
                        break;
                    }
                    var e = await node.GetBlockStatusAsync(pos, end - pos, _broken.Token).ConfigureAwait(false);
                    var len = Math.Min(e.Length, end - pos);
                    if (e.Offset != pos || len <= 0)
                    {
                        extents[count++] = new ImageExtent(pos, end - pos, ExtentKind.Data);
                        break;
                    }
                    if (count > 0 && extents[count - 1].Kind == e.Kind)
                        extents[count - 1] = extents[count - 1] with { Length = extents[count - 1].Length + len };
                    else
                        extents[count++] = new ImageExtent(pos, len, e.Kind);
                    pos += len;
                }
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // Block status is an optimisation here: without it, send the data.
                count = 0;
            }
            if (count == 0 || (count == 1 && extents[0].Kind == ExtentKind.Data))
            {
                await DenseReadAsync(request).ConfigureAwait(false);
                return;
            }

            var size = 0;
            for (var i = 0; i < count; i++)
                size += extents[i].Kind == ExtentKind.Zero ? NbdWire.HoleChunkSize : NbdWire.DataChunkHeaderSize + (int)extents[i].Length;
            var message = ArrayPool<byte>.Shared.Rent(size);
            try
            {
                var p = 0;
                for (var i = 0; i < count; i++)
                {
                    var extent = extents[i];
                    var chunkFlags = i == count - 1 ? NbdConstants.ReplyFlagDone : (ushort)0;
                    if (extent.Kind == ExtentKind.Zero)
                    {
                        NbdWire.WriteHoleChunk(message.AsSpan(p), chunkFlags, request.Cookie, extent.Offset, (uint)extent.Length);
                        p += NbdWire.HoleChunkSize;
                    }
                    else
                    {
                        NbdWire.WriteDataChunkHeader(message.AsSpan(p), chunkFlags, request.Cookie, extent.Offset, (int)extent.Length);
                        try
                        {
                            await node.ReadAsync(extent.Offset, message.AsMemory(p + NbdWire.DataChunkHeaderSize, (int)extent.Length), _broken.Token).ConfigureAwait(false);
                        }
                        catch (Exception e) when (!_broken.IsCancellationRequested)
                        {
                            await ReplyFailureAsync(request, e).ConfigureAwait(false);
                            return;
                        }
                        p += NbdWire.DataChunkHeaderSize + (int)extent.Length;
                    }
                }
                await SendAsync(message.AsMemory(0, size)).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(message);
            }
        }
        finally
        {
            ArrayPool<ImageExtent>.Shared.Return(extents);
        }
    }

    /// <summary>One NBD_REPLY_TYPE_BLOCK_STATUS chunk per selected context, the last one marked done.</summary>
    private async Task BlockStatusCommandAsync(NbdServerRequest request)
    {
        var length = request.Length;
        var contexts = _contexts;
        var maxExtents = (request.Flags & NbdConstants.CmdFlagReqOne) != 0 ? 1 : _options.MaxBlockStatusExtents;
        var chunkMax = NbdWire.BlockStatusChunkHeaderSize + (NbdWire.BlockStatusDescriptorSize * maxExtents);
        var message = ArrayPool<byte>.Shared.Rent(chunkMax * contexts.Count);
        try
        {
            var p = 0;
            for (var i = 0; i < contexts.Count; i++)
            {
                var context = contexts[i];
                int descriptors;
                try
                {
                    var area = message.AsMemory(p + NbdWire.BlockStatusChunkHeaderSize, NbdWire.BlockStatusDescriptorSize * maxExtents);
                    descriptors = context.Bitmap is null
                        ? await AllocationExtentsAsync(request.Offset, length, area, maxExtents).ConfigureAwait(false)
                        : BitmapExtents(context, request.Offset, length, area.Span, maxExtents);
                }
                catch (Exception e) when (!_broken.IsCancellationRequested)
                {
                    await ReplyFailureAsync(request, e).ConfigureAwait(false);
                    return;
                }
                var chunkFlags = i == contexts.Count - 1 ? NbdConstants.ReplyFlagDone : (ushort)0;
                NbdWire.WriteBlockStatusChunkHeader(message.AsSpan(p), chunkFlags, request.Cookie, context.Id, descriptors);
                p += NbdWire.BlockStatusChunkHeaderSize + (NbdWire.BlockStatusDescriptorSize * descriptors);
            }
            await SendAsync(message.AsMemory(0, p)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    /// <summary>base:allocation descriptors: zero extents are HOLE|ZERO, data is 0; runs of one kind merged.</summary>
    private async ValueTask<int> AllocationExtentsAsync(long offset, uint length, Memory<byte> area, int maxExtents)
    {
        var node = _node!;
        var end = offset + length;
        var pos = offset;
        var count = 0;
        uint lastFlags = 0;
        uint lastLength = 0;
        while (pos < end)
        {
            var e = await node.GetBlockStatusAsync(pos, end - pos, _broken.Token).ConfigureAwait(false);
            var len = Math.Min(e.Length, end - pos);
            if (e.Offset != pos || len <= 0)
                throw new IOException($"block status at {pos} answered [{e.Offset}, +{e.Length})");
            var flags = e.Kind == ExtentKind.Zero ? NbdConstants.StateHole | NbdConstants.StateZero : 0u;
            if (count > 0 && flags == lastFlags)
            {
                lastLength += (uint)len; // cannot overflow: the sum stays within the u32 request length
                NbdWire.RewriteBlockStatusDescriptorLength(area.Span, count - 1, lastLength);
            }
            else
            {
                if (count == maxExtents)
                    break;
                lastFlags = flags;
                lastLength = (uint)len;
                NbdWire.WriteBlockStatusDescriptor(area.Span, count, lastLength, flags);
                count++;
            }
            pos += len;
        }
        return count;
    }

    /// <summary>qemu:dirty-bitmap descriptors: dirty runs flagged 1, clean runs 0, exact to the byte range.</summary>
    private static int BitmapExtents(NbdMetaContext context, long offset, uint length, Span<byte> area, int maxExtents)
    {
        var bitmap = context.Bitmap!;
        var end = offset + length;
        var pos = offset;
        var count = 0;
        while (pos < end && count < maxExtents)
        {
            uint flags;
            long len;
            if (pos >= bitmap.Size)
            {
                flags = 0; // cannot happen while sizes agree; report clean rather than fail
                len = end - pos;
            }
            else
            {
                bitmap.TryGetFirstExtent(pos, Math.Min(end, bitmap.Size) - pos, out _, out len, out var dirty);
                flags = dirty ? NbdConstants.StateDirty : 0;
                if (len <= 0)
                    break;
            }
            NbdWire.WriteBlockStatusDescriptor(area, count, (uint)len, flags);
            count++;
            pos += len;
        }
        return count;
    }

    // ---- replies --------------------------------------------------------------------------

    private async ValueTask ReplyOkAsync(ulong cookie)
    {
        // A simple reply is allowed for any successful command without payload, structured or not.
        var message = ArrayPool<byte>.Shared.Rent(NbdConstants.SimpleReplyHeaderSize);
        try
        {
            NbdWire.WriteSimpleReply(message, 0, cookie);
            await SendAsync(message.AsMemory(0, NbdConstants.SimpleReplyHeaderSize)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    private async ValueTask SendNoneChunkAsync(ulong cookie)
    {
        var message = ArrayPool<byte>.Shared.Rent(NbdConstants.StructuredReplyHeaderSize);
        try
        {
            NbdWire.WriteNoneChunk(message, cookie);
            await SendAsync(message.AsMemory(0, NbdConstants.StructuredReplyHeaderSize)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(message);
        }
    }

    private ValueTask ReplyFailureAsync(NbdServerRequest request, Exception failure)
    {
        var errno = NbdErrors.ToErrno(failure);
        if (errno == NbdConstants.EIO)
            _server.Log($"NBD client {Peer}: command {request.Type} at {request.Offset} failed: {failure.Message}");
        return ReplyErrorAsync(request.Cookie, errno, failure.Message);
    }

    /// <summary>
    /// An error reply: a structured error chunk (with the message) once structured replies are
    /// negotiated, which a READ then requires; a simple reply otherwise.
    /// </summary>
    private async ValueTask ReplyErrorAsync(ulong cookie, uint errno, string message)
    {
        if (!_structured)
        {
            var simple = ArrayPool<byte>.Shared.Rent(NbdConstants.SimpleReplyHeaderSize);
            try
            {
                NbdWire.WriteSimpleReply(simple, errno, cookie);
                await SendAsync(simple.AsMemory(0, NbdConstants.SimpleReplyHeaderSize)).ConfigureAwait(false);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(simple);
            }
            return;
        }
        var text = NbdWire.ErrorText(message);
        var size = NbdWire.ErrorChunkSize(text);
        var chunk = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            NbdWire.WriteErrorChunk(chunk, cookie, errno, text);
            await SendAsync(chunk.AsMemory(0, size)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }
}
