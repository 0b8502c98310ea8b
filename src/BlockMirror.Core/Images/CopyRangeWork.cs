using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;

namespace BlockMirror.Core.Images;

/// <summary>
/// One copy_file_range run on a thread-pool worker (it blocks for as long as the kernel copies,
/// like pread/pwrite, which .NET also runs there). Instances are pooled and are their own
/// <see cref="IValueTaskSource"/>, so a copy allocates nothing once the pool is warm: the copy loop
/// issues one per chunk.
/// </summary>
internal sealed class CopyRangeWork : IThreadPoolWorkItem, IValueTaskSource
{
    private static readonly ConcurrentQueue<CopyRangeWork> Pool = new();

    private ManualResetValueTaskSourceCore<bool> _core;
    private RawFileImage? _source;
    private RawFileImage? _target;
    private long _offset;
    private long _length;
    private bool _refuseLeadingZeroes;

    /// <summary>
    /// Queues the copy of [offset, +length) from <paramref name="source"/> to <paramref name="target"/>;
    /// with <paramref name="refuseLeadingZeroes"/> the same work item first reads the source's first
    /// page and refuses the copy if it is zeroes (one thread-pool hop per chunk instead of two).
    /// Before either, the source may queue the range's reads (<see cref="RawFileImage.PrefetchForCopy"/>).
    /// </summary>
    public static ValueTask Run(RawFileImage source, RawFileImage target, long offset, long length, bool refuseLeadingZeroes)
    {
        if (!Pool.TryDequeue(out var work))
            work = new CopyRangeWork();
        work._source = source;
        work._target = target;
        work._offset = offset;
        work._length = length;
        work._refuseLeadingZeroes = refuseLeadingZeroes;
        var task = new ValueTask(work, work._core.Version);
        ThreadPool.UnsafeQueueUserWorkItem(work, preferLocal: false);
        return task;
    }

    void IThreadPoolWorkItem.Execute()
    {
        try
        {
            _source!.PrefetchForCopy(_offset, _length);
            if (_refuseLeadingZeroes && _source!.StartsWithZeroesBlocking(_offset, _length))
                throw new CopyRangeRefusedException($"'{_source.Location}' holds zeroes at {_offset}: written as zeroes", permanent: false);
            _target!.CopyRangeBlocking(_source!, _offset, _length);
            _core.SetResult(true);
        }
        catch (Exception e)
        {
            _core.SetException(e);
        }
    }

    void IValueTaskSource.GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _source = null;
            _target = null;
            _core.Reset();
            Pool.Enqueue(this);
        }
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
