using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

/// <summary>
/// A qcow2 image file in memory that remembers every write since the last flush, so a test can build
/// what a power cut could leave on disk: the flushed state plus any subset of the later writes (a
/// write is the unit, applied in order; the page cache may write back any of them, in any order).
/// Disposing it does not lose the bytes: the same file can be opened again, as a file on disk can.
/// </summary>
internal sealed class MemoryQcow2File : IQcow2File
{
    private readonly Lock _lock = new();
    private readonly List<(long Offset, byte[] Before, byte[] After, long LengthBefore)> _unsynced = [];
    private byte[] _data;
    private long _length;

    public MemoryQcow2File(byte[]? content = null, bool yieldOnAsync = true)
    {
        _data = content ?? new byte[1 << 20];
        _length = content?.LongLength ?? 0;
        _yield = yieldOnAsync;
    }

    private readonly bool _yield;

    /// <summary>Runs just before each flush, while the writes since the last one are still undecided (to take crash images).</summary>
    public Action<MemoryQcow2File>? BeforeFlush { get; set; }

    public string Path => "memory.qcow2";

    public long Length
    {
        get
        {
            lock (_lock)
                return _length;
        }
    }

    public long AllocatedBytes => Length;

    /// <summary>fdatasyncs so far.</summary>
    public int Flushes { get; private set; }

    /// <summary>Writes since the last flush.</summary>
    public int UnsyncedWrites
    {
        get
        {
            lock (_lock)
                return _unsynced.Count;
        }
    }

    /// <summary>When set, every write and flush throws it (an image on a failing disk).</summary>
    public Exception? FailIo { get; set; }

    /// <summary>
    /// A kill -9 of the writing process after this many more writes (and flushes) have reached the
    /// file: the content then is kept in <see cref="KilledImage"/> (the page cache outlives a process),
    /// and every later write or flush throws, as if it never happened. Null: never.
    /// </summary>
    public int? WritesUntilKill { get; set; }

    /// <summary>What the file held at the moment <see cref="WritesUntilKill"/> ran out.</summary>
    public byte[]? KilledImage { get; private set; }

    private void CountTowardsKill()
    {
        if (KilledImage is not null)
            throw new IOException("the writing process was killed");
        if (WritesUntilKill is not { } left)
            return;
        if (left > 0)
        {
            WritesUntilKill = left - 1;
            return;
        }
        KilledImage = _data.AsSpan(0, (int)_length).ToArray();
        throw new IOException("the writing process was killed");
    }

    public void Read(long offset, Span<byte> buffer)
    {
        lock (_lock)
        {
            buffer.Clear();
            var available = (int)Math.Clamp(_length - offset, 0, buffer.Length);
            _data.AsSpan((int)offset, available).CopyTo(buffer);
        }
    }

    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        if (FailIo is { } failure)
            throw failure;
        lock (_lock)
        {
            CountTowardsKill();
            var lengthBefore = _length;
            var end = offset + data.Length;
            EnsureCapacity(end);
            var before = _data.AsSpan((int)offset, data.Length).ToArray();
            data.CopyTo(_data.AsSpan((int)offset));
            _length = Math.Max(_length, end);
            _unsynced.Add((offset, before, data.ToArray(), lengthBefore));
        }
    }

    public void Flush()
    {
        if (FailIo is { } failure)
            throw failure;
        lock (_lock)
            CountTowardsKill();
        BeforeFlush?.Invoke(this);
        lock (_lock)
        {
            _unsynced.Clear();
            Flushes++;
        }
    }

    public void SetLength(long length)
    {
        lock (_lock)
        {
            EnsureCapacity(length);
            if (length < _length)
                _data.AsSpan((int)length, (int)(_length - length)).Clear();
            _length = length;
            // A size change is a metadata operation of the file system; tests treat it as durable.
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Read(offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        // Yield so concurrent requests really interleave, as they do on a real file.
        if (_yield)
            await Task.Yield();
        Write(offset, data.Span);
    }

    public async ValueTask FlushAsync(CancellationToken cancellationToken = default)
    {
        if (_yield)
            await Task.Yield();
        Flush();
    }

    public ValueTask PunchHoleAsync(long offset, long length, CancellationToken cancellationToken = default)
    {
        // Punching never extends the file; what lies past its end reads as zeroes already.
        var end = Math.Min(offset + length, Length);
        if (end > offset)
            Write(offset, new byte[end - offset]);
        return ValueTask.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    /// <summary>The bytes as they are now (every write applied).</summary>
    public byte[] Snapshot()
    {
        lock (_lock)
            return _data.AsSpan(0, (int)_length).ToArray();
    }

    /// <summary>
    /// What a power cut now could leave: the state at the last flush, then each later write applied
    /// or not as <paramref name="keep"/> decides (in the order they were made).
    /// </summary>
    public byte[] CrashImage(Func<int, bool> keep)
    {
        lock (_lock)
        {
            var image = _data.AsSpan(0, (int)_length).ToArray();
            var length = _length;
            for (var i = _unsynced.Count - 1; i >= 0; i--)
            {
                var (offset, before, _, lengthBefore) = _unsynced[i];
                before.CopyTo(image.AsSpan((int)offset));
                length = lengthBefore;
            }
            Array.Resize(ref image, (int)Math.Max(length, image.Length));
            for (var i = 0; i < _unsynced.Count; i++)
            {
                if (!keep(i))
                    continue;
                var (offset, _, after, _) = _unsynced[i];
                if (offset + after.Length > image.Length)
                    Array.Resize(ref image, (int)(offset + after.Length));
                after.CopyTo(image.AsSpan((int)offset));
                length = Math.Max(length, offset + after.Length);
            }
            return image.AsSpan(0, (int)length).ToArray();
        }
    }

    private void EnsureCapacity(long end)
    {
        if (end <= _data.Length)
            return;
        var size = (long)_data.Length;
        while (size < end)
            size *= 2;
        Array.Resize(ref _data, (int)size);
    }
}
