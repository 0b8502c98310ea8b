using System.Buffers;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Nbd.Protocol;

namespace BlockMirror.Nbd;

/// <summary>The transmission phase: request parsing, dispatch, and the commands.</summary>
internal sealed partial class NbdServerConnection
{
    /// <summary>
    /// Requests up to this size are served on the connection's thread when the image can without
    /// waiting (a cached read, a buffered write): the hop to the thread pool would cost more than
    /// the copy. Larger ones leave the reader free to receive the next payload meanwhile.
    /// </summary>
    private const int InlineRequestLimit = 64 * 1024;

    /// <summary>Reads requests until DISC, the end of the stream, or a close; on the connection's thread.</summary>
    private void ReadRequests()
    {
        Span<byte> header = stackalloc byte[NbdConstants.RequestHeaderSize];
        _replies.BeginBatch();
        try
        {
            while (State == NbdConnectionState.Transmission)
            {
                if (!_input.TryReadExact(header))
                    break;
                var request = NbdWire.ReadRequest(header);
                if (request.Magic != NbdConstants.RequestMagic)
                    throw new NbdProtocolException($"bad request magic 0x{request.Magic:x8}");
                if (request.Type == NbdConstants.CmdDisc)
                    break; // soft disconnect: finish what is in flight, then close
                _options.RequestReceived?.Invoke(_export?.Name ?? "", NbdConstants.CommandName(request.Type));

                TakeSlot();
                var dispatched = false;
                try
                {
                    dispatched = Accept(request);
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
            // The client went away or the connection was closed; what was accepted still replies.
        }
        finally
        {
            _replies.EndBatch();
        }
    }

    /// <summary>
    /// A request slot, and room for its reply: when all slots are taken, or the client has not read
    /// enough of its replies (<see cref="NbdReplyWriter.IsBackedUp"/>), the replies queued so far go
    /// out before the reader waits. A client's unread replies so cost the server a bounded amount of
    /// memory, whatever it keeps sending.
    /// </summary>
    private void TakeSlot()
    {
        if (!_replies.IsBackedUp && _slots.Wait(0))
            return;
        _replies.EndBatch();
        try
        {
            _replies.WaitForRoom(_stopReading.Token);
            _slots.Wait(_stopReading.Token);
        }
        finally
        {
            _replies.BeginBatch();
        }
    }

    /// <summary>Validates a request, reads its payload, and starts it; false when it was answered here.</summary>
    private bool Accept(NbdRequestHeader header)
    {
        var (_, flags, type, cookie, offset, length) = header;
        var isWrite = type == NbdConstants.CmdWrite;
        if (isWrite && length > NbdConstants.MaxPayload)
        {
            // The payload follows whatever we answer; skip it to keep the stream framed, if sane.
            if (length > MaxSkippablePayload)
                throw new NbdProtocolException($"write of {length} bytes exceeds the maximum payload");
            _input.Discard(length);
            ReplyError(cookie, NbdConstants.EINVAL, $"request length {length} exceeds the maximum of {NbdConstants.MaxPayload}");
            return false;
        }

        var error = Validate(flags, type, offset, length, out var message);
        if (error == 0 && !ExportStillExists())
        {
            error = NbdConstants.ESHUTDOWN;
            message = "the export was removed";
            BeginClose(_options.StopGracePeriod);
        }
        if (error != 0)
        {
            if (isWrite)
                _input.Discard(length);
            ReplyError(cookie, error, message);
            return false;
        }

        byte[]? payload = null;
        var payloadOffset = 0;
        var aligned = false;
        if (isWrite && length > 0)
        {
            // Received straight into the buffer the image write takes: page-aligned for an O_DIRECT
            // image, which then writes it as it is (a managed array's address would need a bounce copy).
            aligned = _node!.Image.CacheDirect;
            payload = NbdAlignedBuffers.Rent(0, (int)length, aligned, out payloadOffset);
            try
            {
                _input.ReadExact(payload.AsSpan(payloadOffset, (int)length));
            }
            catch
            {
                NbdAlignedBuffers.Return(payload, aligned);
                throw;
            }
        }

        Interlocked.Increment(ref _references);
        // Started here, not handed to Task.Run: it runs on this thread until it has to wait.
        _ = RunRequestAsync(new NbdServerRequest(flags, type, cookie, (long)offset, length, payload, payloadOffset, aligned));
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
            Break(e); // the connection broke under the request: its reply cannot be sent
        }
        catch (Exception e)
        {
            _server.Logger.RequestFailedUnexpectedly(e, Peer, NbdConstants.CommandName(request.Type));
            Break(e);
        }
        finally
        {
            if (request.Payload is { } payload)
                NbdAlignedBuffers.Return(payload, request.AlignedPayload);
            _slots.Release();
            ReleaseReference();
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
                    var write = WriteRequest.ForData(request.Offset, request.Data, fua) with { OnCallerThread = length <= InlineRequestLimit };
                    await node.WriteAsync(write, CancellationToken.None).ConfigureAwait(false);
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
            ReplyOk(request.Cookie);
        else
            ReplyFailure(request, failure);
    }

    /// <summary>
    /// One pread into the reply buffer, the reply's header in front of the data, on this thread when
    /// the data is cached. A structured read without DF may answer zero ranges as hole chunks: a large
    /// one asks block status first (holes are then not read at all), a small one only when its data
    /// has a zero block, the only place a hole can be.
    /// </summary>
    private async Task ReadCommandAsync(NbdServerRequest request)
    {
        var length = (int)request.Length; // validated: at most 32 MiB
        if (_structured && length == 0)
        {
            ReplyNone(request.Cookie);
            return;
        }
        var sparse = _structured && _options.SparseReads && (request.Flags & NbdConstants.CmdFlagDf) == 0;
        // An O_DIRECT image preads into a page-aligned data area as it is, else through a bounce
        // buffer: so a direct export reads the whole range there first, and answers holes from it
        // (reading a hole costs no device I/O), rather than each data run into an unaligned chunk.
        var aligned = length > 0 && _node!.Image.CacheDirect;
        if (sparse && !aligned && length > InlineRequestLimit && await TryAnswerSparseAsync(request, ReadOnlyMemory<byte>.Empty).ConfigureAwait(false))
            return;

        var head = _structured ? NbdWire.DataChunkHeaderSize : NbdConstants.SimpleReplyHeaderSize;
        var message = NbdAlignedBuffers.Rent(head, length, aligned, out var start);
        var queued = false;
        try
        {
            var data = message.AsMemory(start + head, length);
            if (!await TryReadAsync(request, request.Offset, data).ConfigureAwait(false))
                return;
            if (sparse && (length <= InlineRequestLimit || aligned) && MayHoldHole(request.Offset, data.Span)
                && await TryAnswerSparseAsync(request, data).ConfigureAwait(false))
                return;
            if (_structured)
                NbdWire.WriteDataChunkHeader(message.AsSpan(start), NbdConstants.ReplyFlagDone, request.Cookie, request.Offset, length);
            else
                NbdWire.WriteSimpleReply(message.AsSpan(start), 0, request.Cookie);
            _replies.Enqueue(message, start, head + length, aligned);
            queued = true;
        }
        finally
        {
            if (!queued)
                NbdAlignedBuffers.Return(message, aligned);
        }
    }

    /// <summary>
    /// Reads <paramref name="data"/>.Length bytes at <paramref name="offset"/>: on this thread when the
    /// range is small and cached, otherwise asynchronously. False when the read failed, which was answered.
    /// </summary>
    private async ValueTask<bool> TryReadAsync(NbdServerRequest request, long offset, Memory<byte> data)
    {
        var node = _node!;
        try
        {
            if (data.Length <= InlineRequestLimit && node.TryReadCached(offset, data.Span))
                return true;
            await node.ReadAsync(offset, data, _broken.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (!_broken.IsCancellationRequested)
        {
            ReplyFailure(request, e);
            return false;
        }
    }

    /// <summary>
    /// True when some piece of <paramref name="data"/> between 4 KiB boundaries of the image is all
    /// zero bytes: files are data or hole in whole pages, so elsewhere block status can only say data.
    /// </summary>
    private static bool MayHoldHole(long offset, ReadOnlySpan<byte> data)
    {
        const int Page = 4096;
        var pos = 0;
        while (pos < data.Length)
        {
            var next = (int)Math.Min(data.Length, pos + (Page - ((offset + pos) % Page)));
            if (!data[pos..next].ContainsAnyExcept((byte)0))
                return true;
            pos = next;
        }
        return false;
    }

    /// <summary>
    /// Answers a read with OFFSET_HOLE chunks for the ranges block status reports as zero and
    /// OFFSET_DATA chunks for the rest, all in one reply; data comes from <paramref name="alreadyRead"/>
    /// when the range was read (the whole request), else it is read now, before anything is sent, so
    /// an I/O error is reported cleanly as the only chunk. False, with nothing sent, when the range
    /// is all data (or block status failed): the caller sends it as one data chunk.
    /// </summary>
    private async ValueTask<bool> TryAnswerSparseAsync(NbdServerRequest request, ReadOnlyMemory<byte> alreadyRead)
    {
        var extents = ArrayPool<ImageExtent>.Shared.Rent(MaxReadChunks);
        try
        {
            var count = await CollectReadExtentsAsync(request, extents).ConfigureAwait(false);
            if (count == 0 || (count == 1 && extents[0].Kind == ExtentKind.Data))
                return false;

            var size = 0;
            for (var i = 0; i < count; i++)
                size += extents[i].Kind == ExtentKind.Zero ? NbdWire.HoleChunkSize : NbdWire.DataChunkHeaderSize + (int)extents[i].Length;
            var message = ArrayPool<byte>.Shared.Rent(size);
            var queued = false;
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
                        continue;
                    }
                    NbdWire.WriteDataChunkHeader(message.AsSpan(p), chunkFlags, request.Cookie, extent.Offset, (int)extent.Length);
                    var data = message.AsMemory(p + NbdWire.DataChunkHeaderSize, (int)extent.Length);
                    if (!alreadyRead.IsEmpty)
                        alreadyRead.Slice((int)(extent.Offset - request.Offset), (int)extent.Length).CopyTo(data);
                    else if (!await TryReadAsync(request, extent.Offset, data).ConfigureAwait(false))
                        return true;
                    p += NbdWire.DataChunkHeaderSize + (int)extent.Length;
                }
                _replies.EnqueuePooled(message, size);
                queued = true;
                return true;
            }
            finally
            {
                if (!queued)
                    ArrayPool<byte>.Shared.Return(message);
            }
        }
        finally
        {
            ArrayPool<ImageExtent>.Shared.Return(extents);
        }
    }

    /// <summary>The request's range as runs of data and zeroes, at most <see cref="MaxReadChunks"/> (the rest as data); 0 when block status failed.</summary>
    private async ValueTask<int> CollectReadExtentsAsync(NbdServerRequest request, ImageExtent[] extents)
    {
        var node = _node!;
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
            return 0;
        }
        return count;
    }

    /// <summary>One NBD_REPLY_TYPE_BLOCK_STATUS chunk per selected context, the last one marked done.</summary>
    private async Task BlockStatusCommandAsync(NbdServerRequest request)
    {
        var length = request.Length;
        var contexts = _contexts;
        var maxExtents = (request.Flags & NbdConstants.CmdFlagReqOne) != 0 ? 1 : _options.MaxBlockStatusExtents;
        var chunkMax = NbdWire.BlockStatusChunkHeaderSize + (NbdWire.BlockStatusDescriptorSize * maxExtents);
        var message = ArrayPool<byte>.Shared.Rent(chunkMax * contexts.Count);
        var queued = false;
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
                    ReplyFailure(request, e);
                    return;
                }
                var chunkFlags = i == contexts.Count - 1 ? NbdConstants.ReplyFlagDone : (ushort)0;
                NbdWire.WriteBlockStatusChunkHeader(message.AsSpan(p), chunkFlags, request.Cookie, context.Id, descriptors);
                p += NbdWire.BlockStatusChunkHeaderSize + (NbdWire.BlockStatusDescriptorSize * descriptors);
            }
            _replies.EnqueuePooled(message, p);
            queued = true;
        }
        finally
        {
            if (!queued)
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

    private void ReplyOk(ulong cookie)
    {
        // A simple reply is allowed for any successful command without payload, structured or not.
        Span<byte> reply = stackalloc byte[NbdConstants.SimpleReplyHeaderSize];
        NbdWire.WriteSimpleReply(reply, 0, cookie);
        _replies.Enqueue(reply);
    }

    private void ReplyNone(ulong cookie)
    {
        Span<byte> reply = stackalloc byte[NbdConstants.StructuredReplyHeaderSize];
        NbdWire.WriteNoneChunk(reply, cookie);
        _replies.Enqueue(reply);
    }

    private void ReplyFailure(NbdServerRequest request, Exception failure)
    {
        var errno = NbdErrors.ToErrno(failure);
        if (errno == NbdConstants.EIO)
            _server.Logger.CommandFailed(Peer, NbdConstants.CommandName(request.Type), request.Offset, failure.Message);
        ReplyError(request.Cookie, errno, failure.Message);
    }

    /// <summary>
    /// An error reply: a structured error chunk (with the message) once structured replies are
    /// negotiated, which a READ then requires; a simple reply otherwise.
    /// </summary>
    private void ReplyError(ulong cookie, uint errno, string message)
    {
        if (!_structured)
        {
            Span<byte> simple = stackalloc byte[NbdConstants.SimpleReplyHeaderSize];
            NbdWire.WriteSimpleReply(simple, errno, cookie);
            _replies.Enqueue(simple);
            return;
        }
        var text = NbdWire.ErrorText(message);
        var size = NbdWire.ErrorChunkSize(text);
        var chunk = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            NbdWire.WriteErrorChunk(chunk, cookie, errno, text);
            _replies.Enqueue(chunk.AsSpan(0, size));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(chunk);
        }
    }
}
