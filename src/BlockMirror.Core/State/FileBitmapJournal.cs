using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using BlockMirror.Core.Images;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Win32.SafeHandles;

namespace BlockMirror.Core.State;

/// <summary>
/// <see cref="IBitmapJournal"/> as append-only segment files beside the database
/// (<c>&lt;prefix&gt;.&lt;base sequence&gt;.seg</c>, where the host's prefix is <c>&lt;database&gt;.bitmaps</c>),
/// made durable with fdatasync, with group commit: one thread owns the files; an append joins the
/// batch being collected and waits for its flush, and while one flush is on the disk every new
/// append collects into the next one, so N writers arriving together cost about two fdatasyncs, not N.
/// </summary>
/// <remarks>
/// Why a file of our own and not a table in the SQLite database (bench/README.md, "Persistent bitmap
/// journal"): measured here, interleaved, one 40-byte append + fdatasync has a median of 0.33–0.53 ms
/// and one one-row commit with journal_mode=WAL, synchronous=FULL 0.36–0.70 ms (1.1–1.3×; both swing
/// up to several ms when other tenants load the disk), so the fsync alone barely decides it. What does:
/// the database has one writer lock, held by event and job saves, and a table would make a guest's
/// first write to a granule queue behind them (and meet SQLITE_BUSY handling on the data path); here
/// the flusher thread owns its file and a group commit is exactly one write and one fdatasync.
/// Checkpoints still live in SQLite (content and covered sequence in one row, one transaction); the
/// sequence numbers make the two agree without a shared transaction.
/// Beside them, <c>&lt;prefix&gt;.alive</c> holds a timestamp rewritten every <see cref="FileBitmapJournalOptions.AliveInterval"/>
/// (no fsync: a killed process keeps the page cache), the bound used after a crash to tell the
/// service's own last writes to an image from a later modification by someone else.
/// </remarks>
public sealed partial class FileBitmapJournal : IBitmapJournal
{
    private const string SegmentExtension = ".seg";
    private const string AliveSuffix = ".alive";

    private readonly string _directory;
    private readonly string _prefix;
    private readonly FileBitmapJournalOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly SemaphoreSlim _wake = new(0);
    private readonly List<SegmentFile> _sealed = [];
    private TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private List<string> _recovered = [];
    private bool _disposed;

    // Guarded by _lock: the batch being collected and whether the flusher has work.
    private List<JournalEntry> _pending = [];
    private List<JournalEntry> _spare = [];
    private TaskCompletionSource _batch = NewBatch();
    private bool _flusherBusy;
    private bool _started;
    private bool _stopping;
    private bool _restarting;
    private long _lastSequence;
    private Exception? _failure;

    // Owned by the flusher thread once started.
    private SafeFileHandle? _segment;
    private SegmentFile _current;
    private long _segmentOffset;
    private int _segmentEntries;
    private long _lastFlushed;
    private byte[] _buffer = new byte[4096];
    private SafeFileHandle? _alive;
    private long _nextAliveTicks;

    // The .alive file's sequences (written under _aliveFileLock by the flusher and by a release).
    private readonly Lock _aliveFileLock = new();
    private volatile bool _aliveFailing;
    private long _aliveDurable;
    private long _aliveFolded;
    private Thread? _thread;

    private long _appends;
    private long _flushes;
    private long _bytes;

    /// <param name="pathPrefix">Every file of the journal is this path plus a suffix (its folder must be writable).</param>
    public FileBitmapJournal(string pathPrefix, FileBitmapJournalOptions? options = null, TimeProvider? time = null, ILogger<FileBitmapJournal>? logger = null)
    {
        _logger = logger ?? NullLogger<FileBitmapJournal>.Instance;
        _prefix = Path.GetFullPath(pathPrefix);
        _directory = Path.GetDirectoryName(_prefix) ?? throw new ArgumentException("The journal needs a folder", nameof(pathPrefix));
        _options = options ?? new FileBitmapJournalOptions();
        _time = time ?? TimeProvider.System;
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.SegmentEntries, 1);
    }

    public long LastSequence => Volatile.Read(ref _lastSequence);

    public JournalStatistics Statistics => new(Interlocked.Read(ref _appends), Interlocked.Read(ref _flushes), Interlocked.Read(ref _bytes));

    public event Action? SegmentSealed;

    public Exception? Failure
    {
        get
        {
            lock (_lock)
                return _failure;
        }
    }

    public event Action? WriteFailed;

    /// <summary>
    /// Reads every segment, and tells what a crash leaves from damage. A crash (kill -9, power cut)
    /// only tears what was never acknowledged: bytes after the last group commit of the last segment.
    /// Everything acknowledged is accounted for by two independent records: each segment's header
    /// names the last sequence durable when it was opened (so the segment before it must reach that
    /// far), and the <c>.alive</c> file holds the last sequence acknowledged durable (so the last
    /// segment must reach that far) and the sequence the checkpoints cover (so the first segment must
    /// start right after it). A segment that is cut short (at a record boundary or not), has a damaged
    /// record followed by valid ones, or is missing, leaves sequences below one of those marks
    /// unreadable: <see cref="JournalRecovery.Damage"/>. Valid records found past damage are still
    /// returned (a superset of dirty granules is always safe).
    /// </summary>
    public Task<JournalRecovery> RecoverAsync(CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(_directory);
        var (_, durable, folded) = ReadAliveState();
        var segments = ListSegments().ToList();
        // Pass 1, the headers: what each segment says the one before it must hold.
        var previousDurable = segments.Select(s => ReadPreviousDurable(s.Path, s.BaseSequence)).ToList();
        var entries = new List<JournalEntry>();
        var damage = new List<JournalDamage>();
        var files = new List<string>();
        long last = 0;
        if (segments.Count > 0 && folded is { } f && previousDurable[0] > f)
        {
            damage.Add(new JournalDamage(f, previousDurable[0],
                $"the journal segments holding sequences {f + 1}-{previousDurable[0]} are missing (the next one, {Path.GetFileName(segments[0].Path)}, starts after {previousDurable[0]})"));
        }
        if (segments.Count == 0 && durable is { } d && folded is { } g && d > g)
            damage.Add(new JournalDamage(g, d, $"every journal segment is missing (sequences {g + 1}-{d} were acknowledged durable)"));
        for (var i = 0; i < segments.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var (path, baseSequence) = segments[i];
            files.Add(path);
            // What this segment must reach: what the next one says was durable before it, or for the
            // last one, the last sequence acknowledged durable.
            long? bound = i + 1 < segments.Count ? previousDurable[i + 1] : durable;
            var read = new List<JournalEntry>();
            var problem = ReadSegment(path, baseSequence, bound, read);
            // Segments are written one after another, so their sequences never overlap; a later
            // segment's entries are only trusted when they continue the earlier ones.
            if (read.Count > 0 && read[0].Sequence <= last)
                read.Clear();
            entries.AddRange(read);
            if (read.Count > 0)
                last = read[^1].Sequence;
            last = Math.Max(last, baseSequence - 1);
            if (problem is not null)
                damage.Add(problem);
        }
        last = Math.Max(last, durable ?? 0);
        _recovered = files;
        // Whatever lies at or below the folded sequence is in the checkpoints already.
        var clipped = damage
            .Select(x => folded is { } h && x.After < h ? x with { After = h } : x)
            .Where(x => x.Through > x.After)
            .ToList();
        return Task.FromResult(new JournalRecovery(entries, last, ReadAliveUntil()) { Damage = clipped });
    }

    public Task StartAsync(long nextSequence, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nextSequence, 1);
        lock (_lock)
        {
            if (_started || _thread is not null)
                throw new InvalidOperationException("The journal is already started");
        }
        Directory.CreateDirectory(_directory);
        // Every recovered entry is folded into a checkpoint by now: recorded (durably, before the old
        // segments go) as the folded-through sequence, so a recovery never takes their absence for damage.
        _alive = File.OpenHandle(_prefix + AliveSuffix, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite);
        RecordCheckpointedThrough(nextSequence - 1);
        // A crash between these deletes and the new segment leaves no entry, and the checkpoints'
        // sequences keep numbering ahead.
        foreach (var path in _recovered.Concat(ListSegments().Select(s => s.Path)).Distinct(StringComparer.Ordinal))
            File.Delete(path);
        _recovered = [];
        _lastFlushed = nextSequence - 1;
        OpenSegment(nextSequence);
        TouchAlive();
        _thread = new Thread(Run) { IsBackground = true, Name = "bitmap-journal" };
        _thread.Start();
        // Only now: an append accepted earlier would wait for a flusher that does not exist.
        lock (_lock)
        {
            _lastSequence = nextSequence - 1;
            _started = true;
        }
        return Task.CompletedTask;
    }

    public ValueTask AppendAsync(string node, string bitmap, long firstGranule, long granuleCount)
    {
        ArgumentNullException.ThrowIfNull(node);
        ArgumentNullException.ThrowIfNull(bitmap);
        ArgumentOutOfRangeException.ThrowIfNegative(firstGranule);
        ArgumentOutOfRangeException.ThrowIfLessThan(granuleCount, 1);
        if (Encoding.UTF8.GetByteCount(node) > byte.MaxValue || Encoding.UTF8.GetByteCount(bitmap) > byte.MaxValue)
            throw new ArgumentException("A node or bitmap name is too long for the journal");
        Task durable;
        bool wake = false;
        lock (_lock)
        {
            if (_failure is { } failure)
                return ValueTask.FromException(Failed(failure));
            if (!_started || _stopping || _restarting)
                return ValueTask.FromException(new BitmapJournalException("The bitmap journal is not running"));
            var sequence = ++_lastSequence;
            _pending.Add(new JournalEntry(sequence, node, bitmap, firstGranule, granuleCount));
            durable = _batch.Task;
            if (!_flusherBusy)
            {
                _flusherBusy = true;
                wake = true;
            }
        }
        Interlocked.Increment(ref _appends);
        if (wake)
            _wake.Release();
        return new ValueTask(durable);
    }

    public Task<SealedJournal?> ReadSealedAsync(CancellationToken cancellationToken = default)
    {
        SegmentFile[] segments;
        lock (_sealed)
            segments = _disposed ? [] : [.. _sealed];
        if (segments.Length == 0)
            return Task.FromResult<SealedJournal?>(null);
        var entries = new List<JournalEntry>();
        foreach (var s in segments)
        {
            cancellationToken.ThrowIfCancellationRequested();
            // A sealed segment that no longer holds what was flushed to it must not be folded and
            // dropped: it stays, the bitmaps in memory are still exact, and a checkpoint (any
            // transaction on them, a clean stop) or the next start's recovery deals with it.
            if (ReadSegment(s.Path, s.BaseSequence, s.LastSequence, entries) is { } damage)
                throw new IOException($"The bitmap journal is damaged: {damage.Description}");
        }
        return Task.FromResult<SealedJournal?>(new SealedJournal(entries, segments.Max(s => s.LastSequence)));
    }

    public Task ReleaseSealedAsync(long through, CancellationToken cancellationToken = default)
    {
        List<SegmentFile> released;
        lock (_sealed)
        {
            // A closed journal changes no file any more (its successor may already own them).
            if (_disposed)
                return Task.CompletedTask;
            released = [.. _sealed.Where(s => s.LastSequence <= through)];
            _sealed.RemoveAll(s => s.LastSequence <= through);
        }
        if (released.Count == 0)
            return Task.CompletedTask;
        // Durable before any file goes: a recovery must know these sequences were folded, not lost.
        AdvanceFolded(through);
        foreach (var s in released)
            File.Delete(s.Path);
        StateNative.FsyncDirectory(_directory);
        return Task.CompletedTask;
    }

    /// <summary>Flushes what is pending, stops the thread and closes the files. Appends after this fail.</summary>
    public async ValueTask DisposeAsync()
    {
        lock (_sealed)
            _disposed = true;
        bool running;
        lock (_lock)
        {
            running = _started && !_stopping;
            _stopping = true;
        }
        if (running)
        {
            _wake.Release();
            await _stopped.Task.ConfigureAwait(false);
        }
        _segment?.Dispose();
        _alive?.Dispose();
    }

    // ---- failure and restart -------------------------------------------------------------------

    /// <summary>Appends fail from now on; the first failure is announced (the block layer starts repairing).</summary>
    private void MarkFailed(Exception e)
    {
        bool first;
        lock (_lock)
        {
            first = _failure is null;
            _failure ??= e;
        }
        if (first)
            ThreadPool.QueueUserWorkItem(_ => WriteFailed?.Invoke());
    }

    /// <summary>
    /// Replaces a failed journal by a fresh one, as <see cref="StartAsync"/> does at load: the flusher
    /// stops, every segment goes (the caller has checkpointed every persistent bitmap through
    /// <paramref name="nextSequence"/> - 1, with writes quiesced, so the checkpoints cover whatever the
    /// segments held), and a new segment starts at <paramref name="nextSequence"/>. The failed segment
    /// is never written again: after a failed write or fdatasync its pages cannot be trusted. When the
    /// new segment cannot be created (the disk is still full) the journal stays failed and this can be
    /// called again.
    /// </summary>
    public async Task RestartAsync(long nextSequence, CancellationToken cancellationToken = default)
    {
        lock (_lock)
        {
            if (!_started || _stopping || _restarting)
                throw new BitmapJournalException("The bitmap journal is not running");
            if (_failure is null)
                return;
            ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(nextSequence, _lastSequence);
            // The flusher leaves once nothing is pending; nothing is, since appends fail while failed.
            _restarting = true;
        }
        try
        {
            _wake.Release();
            await _stopped.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            ReplaceSegments(nextSequence);
        }
        catch (Exception e)
        {
            lock (_lock)
                _restarting = false;
            throw e is BitmapJournalException or OperationCanceledException ? e : Failed(e);
        }
        _stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            // A fresh batch: the failed one holds its exception for good. Appends stay refused
            // (failure still set) until the new flusher runs; it must not see the restart flag and leave.
            _batch = NewBatch();
            _pending.Clear();
            _flusherBusy = false;
            _lastSequence = nextSequence - 1;
            _restarting = false;
        }
        _thread = new Thread(Run) { IsBackground = true, Name = "bitmap-journal" };
        _thread.Start();
        lock (_lock)
            _failure = null;
    }

    /// <summary>RestartAsync's file work, with the flusher stopped: every segment deleted, a new one at <paramref name="nextSequence"/>.</summary>
    private void ReplaceSegments(long nextSequence)
    {
        _segment?.Dispose();
        _segment = null;
        List<string> paths;
        lock (_sealed)
        {
            paths = [.. _sealed.Select(s => s.Path)];
            _sealed.Clear();
        }
        if (_current.Path is { } current)
            paths.Add(current);
        // As at a start: the checkpoints cover everything below nextSequence, recorded durably before
        // the segments go, so a recovery never takes their absence for damage (and a disk still full
        // fails the restart here, before anything is deleted).
        RecordCheckpointedThrough(nextSequence - 1);
        foreach (var path in paths.Concat(ListSegments().Select(s => s.Path)).Distinct(StringComparer.Ordinal))
            File.Delete(path);
        StateNative.FsyncDirectory(_directory);
        _lastFlushed = nextSequence - 1;
        OpenSegment(nextSequence);
    }

    // ---- the flusher thread ------------------------------------------------------------------

    private void Run()
    {
        try
        {
            while (true)
            {
                var untilAlive = TimeSpan.FromTicks(Math.Max(0, _nextAliveTicks - _time.GetUtcNow().UtcTicks));
                _wake.Wait(untilAlive);
                TouchAliveIfDue();
                while (TakeBatch(out var batch, out var done))
                {
                    Flush(batch, done);
                    batch.Clear();
                    TouchAliveIfDue();
                }
                lock (_lock)
                {
                    if ((_stopping || _restarting) && _pending.Count == 0)
                        return;
                }
            }
        }
        catch (Exception e)
        {
            // Nothing may wait forever on a flush that will never come: fail the collected batch and every later append.
            TaskCompletionSource batch;
            MarkFailed(e);
            lock (_lock)
            {
                batch = _batch;
                _pending.Clear();
            }
            batch.TrySetException(Failed(e));
        }
        finally
        {
            _stopped.TrySetResult();
        }
    }

    private bool TakeBatch(out List<JournalEntry> batch, out TaskCompletionSource done)
    {
        lock (_lock)
        {
            if (_pending.Count == 0)
            {
                _flusherBusy = false;
                batch = _spare;
                done = _batch;
                return false;
            }
            batch = _pending;
            _pending = _spare;
            _spare = batch;
            done = _batch;
            _batch = NewBatch();
            return true;
        }
    }

    private void Flush(List<JournalEntry> batch, TaskCompletionSource done)
    {
        try
        {
            if (Volatile.Read(ref _failure) is { } failure)
                throw Failed(failure);
            var length = 0;
            foreach (var entry in batch)
                length += JournalCodec.EncodedLength(entry);
            if (_buffer.Length < length)
                _buffer = new byte[Math.Max(length, _buffer.Length * 2)];
            var written = 0;
            foreach (var entry in batch)
                written += JournalCodec.Encode(entry, _buffer.AsSpan(written));
            RandomAccess.Write(_segment!, _buffer.AsSpan(0, written), _segmentOffset);
            _segmentOffset += written;
            LibC.FDataSync(_segment!, _current.Path);
            Interlocked.Increment(ref _flushes);
            Interlocked.Add(ref _bytes, written);
            _lastFlushed = batch[^1].Sequence;
            _segmentEntries += batch.Count;
            RecordDurable(_lastFlushed);
            done.TrySetResult();
        }
        catch (Exception e)
        {
            // Whatever failed, the writers of this batch must hear it (they would wait forever).
            // After a failed fdatasync the page cache may claim data the disk lost: never retry this
            // segment, fail every later append until RestartAsync replaces the journal by checkpoints.
            MarkFailed(e);
            done.TrySetException(Failed(e));
            return;
        }
        if (_segmentEntries >= _options.SegmentEntries)
            Rotate();
    }

    private void Rotate()
    {
        try
        {
            var sealedSegment = _current with { LastSequence = _lastFlushed };
            var old = _segment;
            OpenSegment(_lastFlushed + 1);
            old?.Dispose();
            lock (_sealed)
                _sealed.Add(sealedSegment);
            ThreadPool.QueueUserWorkItem(_ => SegmentSealed?.Invoke());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            MarkFailed(e);
        }
    }

    private void OpenSegment(long baseSequence)
    {
        var path = SegmentPath(baseSequence);
        var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read);
        try
        {
            Span<byte> header = stackalloc byte[JournalCodec.HeaderLength];
            // _lastFlushed: what the segments before this one hold, which a recovery checks them against.
            JournalCodec.WriteHeader(header, baseSequence, _lastFlushed);
            RandomAccess.Write(handle, header, 0);
            LibC.FDataSync(handle, path);
            // The new file's name must survive a power cut too, or its entries would be unreachable.
            StateNative.FsyncDirectory(_directory);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
        _segment = handle;
        _current = new SegmentFile(path, baseSequence, baseSequence - 1);
        _segmentOffset = JournalCodec.HeaderLength;
        _segmentEntries = 0;
    }

    private void TouchAliveIfDue()
    {
        if (_time.GetUtcNow().UtcTicks >= _nextAliveTicks)
            TouchAlive();
    }

    private void TouchAlive()
    {
        var now = _time.GetUtcNow().UtcTicks;
        _nextAliveTicks = now + _options.AliveInterval.Ticks;
        try
        {
            lock (_aliveFileLock)
                WriteAliveFileLocked(now, sync: false);
            _aliveFailing = false;
        }
        catch (IOException e)
        {
            // A missed sign of life only makes a later crash recovery stricter (bitmaps found inconsistent), never wrong.
            AliveNotWritten(e);
        }
    }

    /// <summary>
    /// After a flush's fdatasync, before its appends are acknowledged: <paramref name="sequence"/> is
    /// durable. No fsync of its own: a killed process keeps the page cache, and a stale value after a
    /// power cut only makes recovery less strict (a lower mark), never wrong.
    /// </summary>
    private void RecordDurable(long sequence)
    {
        try
        {
            lock (_aliveFileLock)
            {
                _aliveDurable = sequence;
                WriteAliveFileLocked(_time.GetUtcNow().UtcTicks, sync: false);
            }
            _aliveFailing = false;
        }
        catch (IOException e)
        {
            // As for a missed sign of life: a lower mark only makes a recovery stricter.
            AliveNotWritten(e);
        }
    }

    /// <summary>
    /// A start or restart: the checkpoints cover every entry through <paramref name="through"/>, recorded
    /// durably as both marks of the <c>.alive</c> file before the caller deletes the old segments.
    /// </summary>
    private void RecordCheckpointedThrough(long through)
    {
        lock (_aliveFileLock)
        {
            _aliveDurable = through;
            _aliveFolded = through;
            WriteAliveFileLocked(_time.GetUtcNow().UtcTicks, sync: true);
        }
    }

    /// <summary>Every entry up to <paramref name="through"/> is in the checkpoints: recorded durably (the caller deletes segments next).</summary>
    private void AdvanceFolded(long through)
    {
        lock (_aliveFileLock)
        {
            if (_alive is null || through <= _aliveFolded)
                return;
            _aliveFolded = through;
            WriteAliveFileLocked(_time.GetUtcNow().UtcTicks, sync: true);
        }
    }

    private void WriteAliveFileLocked(long ticks, bool sync)
    {
        Span<byte> content = stackalloc byte[JournalCodec.AliveLength];
        JournalCodec.WriteAlive(content, ticks, _aliveDurable, _aliveFolded);
        RandomAccess.Write(_alive!, content, 0);
        if (sync)
            LibC.FDataSync(_alive!, _prefix + AliveSuffix);
    }

    // ---- reading -----------------------------------------------------------------------------

    private IEnumerable<(string Path, long BaseSequence)> ListSegments()
    {
        if (!Directory.Exists(_directory))
            return [];
        var list = new List<(string, long)>();
        var name = Path.GetFileName(_prefix) + ".";
        foreach (var path in Directory.EnumerateFiles(_directory, name + "*" + SegmentExtension))
        {
            var number = Path.GetFileName(path)[name.Length..^SegmentExtension.Length];
            if (number.Length == 20 && long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out var baseSequence) && baseSequence > 0)
                list.Add((path, baseSequence));
        }
        return list.OrderBy(s => s.Item2);
    }

    private string SegmentPath(long baseSequence) =>
        _prefix + "." + baseSequence.ToString("D20", CultureInfo.InvariantCulture) + SegmentExtension;

    /// <summary>
    /// Reads a segment's entries into <paramref name="into"/>: its valid prefix, then whatever valid
    /// records follow a damaged or torn spot. Returns the damage, or null when the segment holds every
    /// sequence up to <paramref name="bound"/> (what it must hold; null when unknown: then a damaged
    /// record followed by valid ones is damage, and a torn end is not).
    /// </summary>
    private static JournalDamage? ReadSegment(string path, long baseSequence, long? bound, List<JournalEntry> into)
    {
        var name = Path.GetFileName(path);
        byte[] data;
        try
        {
            data = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            data = [];
        }
        if (JournalCodec.ReadHeader(data) is not { } header || header.BaseSequence != baseSequence)
        {
            // A header is written and synced before any record: an unreadable one is an empty segment
            // torn at creation, or damage if anything was durable in it.
            return bound is { } b && b >= baseSequence
                ? new JournalDamage(baseSequence - 1, b, $"segment {name} is unreadable (its header is damaged); sequences {baseSequence}-{b} are lost")
                : null;
        }
        var before = into.Count;
        var prefix = header.RecordsStart + JournalCodec.DecodeAll(data.AsSpan(header.RecordsStart), baseSequence, into);
        var reached = into.Count > before ? into[^1].Sequence : header.PreviousDurable;
        var complete = prefix == data.Length;
        var resynced = complete ? null : JournalCodec.DecodeAfterDamage(data.AsSpan(prefix), reached, into);
        if (bound is not { } must)
        {
            return resynced is { } found
                ? new JournalDamage(reached, found, $"segment {name} has a damaged record at byte {prefix} (after sequence {reached}) followed by valid ones up to {found}")
                : null;
        }
        if (reached >= must)
            return null; // whole; anything after is a torn tail
        var what = complete
            ? $"segment {name} ends at byte {prefix}, after sequence {reached}"
            : resynced is not null
                ? $"segment {name} has a damaged record at byte {prefix} (after sequence {reached}) followed by valid ones"
                : $"segment {name} is damaged from byte {prefix} on (after sequence {reached})";
        return new JournalDamage(reached, must, $"{what}, but sequences up to {must} were acknowledged durable; {reached + 1}-{must} cannot be read");
    }

    /// <summary>The "previous durable" sequence in a segment's header (base − 1 when the header cannot be read).</summary>
    private static long ReadPreviousDurable(string path, long baseSequence)
    {
        try
        {
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            Span<byte> header = stackalloc byte[JournalCodec.HeaderLength];
            var n = RandomAccess.Read(handle, header, 0);
            return JournalCodec.ReadHeader(header[..n]) is { } h && h.BaseSequence == baseSequence ? h.PreviousDurable : baseSequence - 1;
        }
        catch (FileNotFoundException)
        {
            return baseSequence - 1;
        }
    }

    /// <summary>The <c>.alive</c> file as the last run left it (see <see cref="JournalCodec.ReadAlive"/>).</summary>
    private (long Ticks, long? Durable, long? Folded) ReadAliveState()
    {
        try
        {
            return JournalCodec.ReadAlive(File.ReadAllBytes(_prefix + AliveSuffix));
        }
        catch (FileNotFoundException)
        {
            return (0, null, null);
        }
    }

    private DateTime? ReadAliveUntil()
    {
        var ticks = ReadAliveState().Ticks;
        if (ticks <= 0 || ticks > DateTime.MaxValue.Ticks - (_options.AliveInterval + _options.AliveMargin).Ticks)
            return null;
        return new DateTime(ticks, DateTimeKind.Utc) + _options.AliveInterval + _options.AliveMargin;
    }

    /// <summary>Logs the first of a run of failed writes of the sign of life (it is retried every interval).</summary>
    private void AliveNotWritten(IOException e)
    {
        if (!_aliveFailing)
            LogAliveNotWritten(_logger, e, _prefix + AliveSuffix);
        _aliveFailing = true;
    }

    [LoggerMessage(1, LogLevel.Warning, "The bitmap journal's sign of life '{File}' could not be written; a crash recovery will be stricter (bitmaps may be found inconsistent)")]
    private static partial void LogAliveNotWritten(ILogger logger, Exception exception, string file);

    private static BitmapJournalException Failed(Exception cause) =>
        cause as BitmapJournalException ?? new($"The bitmap journal cannot be written: {cause.Message}", cause);

    private static TaskCompletionSource NewBatch() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
