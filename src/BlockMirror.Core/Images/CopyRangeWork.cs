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

    /// <summary>Queues the copy of [offset, +length) from <paramref name="source"/> to <paramref name="target"/>.</summary>
    public static ValueTask Run(RawFileImage source, RawFileImage target, long offset, long length)
    {
        if (!Pool.TryDequeue(out var work))
            work = new CopyRangeWork();
        work._source = source;
        work._target = target;
        work._offset = offset;
        work._length = length;
        var task = new ValueTask(work, work._core.Version);
        ThreadPool.UnsafeQueueUserWorkItem(work, preferLocal: false);
        return task;
    }

    void IThreadPoolWorkItem.Execute()
    {
        try
        {
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
