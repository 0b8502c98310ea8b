using BenchmarkDotNet.Attributes;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Bench;

/// <summary>
/// What the qcow2 driver costs against the raw driver on the same machine and file system:
/// sequential 1 MiB and random 4 KiB writes and reads of a 1 GiB image (files in the page cache;
/// writes end with a flush, so metadata write-back and fdatasync are counted). "Allocating" writes
/// go to a fresh image (qcow2 allocates clusters, 4 KiB ones with copy-on-write of the rest of the
/// 64 KiB cluster); the others overwrite allocated data. Each benchmark is one pass of
/// <see cref="Ops"/> requests with <see cref="QueueDepth"/> in flight.
/// </summary>
[MemoryDiagnoser]
[ShortRunJob]
public class ImageThroughputBenchmarks
{
    private const long Size = 1L << 30;
    private const int Ops = 4096;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bm-image-bench");
    private readonly byte[] _block4K = Random.Shared.GetItems<byte>(Enumerable.Range(1, 255).Select(i => (byte)i).ToArray(), 4096);
    private readonly byte[] _block1M = Random.Shared.GetItems<byte>(Enumerable.Range(1, 255).Select(i => (byte)i).ToArray(), 1 << 20);
    private IBlockImage _image = null!;
    private long[] _offsets = null!;
    private byte[][] _readBuffers = null!;

    [Params("raw", "qcow2")]
    public string Driver { get; set; } = "raw";

    [Params(1, 16)]
    public int QueueDepth { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        Directory.CreateDirectory(_dir);
        var rng = new Random(42);
        _offsets = Enumerable.Range(0, Ops).Select(_ => rng.NextInt64(Size / 4096) * 4096).ToArray();
        _readBuffers = Enumerable.Range(0, 16).Select(_ => new byte[1 << 20]).ToArray();
    }

    [IterationSetup(Targets = [nameof(SequentialWrite_1MiB_Allocating), nameof(RandomWrite_4KiB_Allocating)])]
    public void FreshImage() => _image = NewImage();

    [IterationSetup(Targets = [nameof(SequentialWrite_1MiB_Overwrite), nameof(RandomWrite_4KiB_Overwrite), nameof(SequentialRead_1MiB), nameof(RandomRead_4KiB)])]
    public void FilledImage()
    {
        _image = NewImage();
        Fill(_image).GetAwaiter().GetResult();
    }

    [IterationCleanup]
    public void Cleanup()
    {
        _image.DisposeAsync().AsTask().GetAwaiter().GetResult();
        File.Delete(PathOf());
    }

    [Benchmark]
    public async Task SequentialWrite_1MiB_Allocating()
    {
        await RunAsync(Ops / 16, i => _image.WriteAsync((long)i << 20, _block1M));
        await _image.FlushAsync();
    }

    [Benchmark]
    public async Task SequentialWrite_1MiB_Overwrite()
    {
        await RunAsync(Ops / 16, i => _image.WriteAsync((long)i << 20, _block1M));
        await _image.FlushAsync();
    }

    [Benchmark]
    public Task SequentialRead_1MiB() => RunAsync(Ops / 16, i => _image.ReadAsync((long)i << 20, _readBuffers[i % _readBuffers.Length]));

    [Benchmark]
    public async Task RandomWrite_4KiB_Allocating()
    {
        await RunAsync(Ops, i => _image.WriteAsync(_offsets[i], _block4K));
        await _image.FlushAsync();
    }

    [Benchmark]
    public async Task RandomWrite_4KiB_Overwrite()
    {
        await RunAsync(Ops, i => _image.WriteAsync(_offsets[i], _block4K));
        await _image.FlushAsync();
    }

    [Benchmark]
    public Task RandomRead_4KiB() => RunAsync(Ops, i => _image.ReadAsync(_offsets[i], _readBuffers[i % _readBuffers.Length].AsMemory(0, 4096)));

    private string PathOf() => Path.Combine(_dir, "image." + Driver);

    private IBlockImage NewImage()
    {
        File.Delete(PathOf());
        return Driver == "raw" ? RawFileImage.Create(PathOf(), Size) : Qcow2Image.Create(PathOf(), Size);
    }

    /// <summary>Writes every byte once (so reads and overwrites find allocated data) and flushes.</summary>
    private async Task Fill(IBlockImage image)
    {
        for (long pos = 0; pos < Size; pos += _block1M.Length)
            await image.WriteAsync(pos, _block1M);
        await image.FlushAsync();
    }

    /// <summary><paramref name="count"/> requests, <see cref="QueueDepth"/> at a time.</summary>
    private async Task RunAsync(int count, Func<int, ValueTask> request)
    {
        var next = -1;
        async Task Worker()
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < count)
                await request(i);
        }
        var workers = new Task[QueueDepth];
        for (var w = 0; w < workers.Length; w++)
            workers[w] = Worker();
        await Task.WhenAll(workers);
    }
}
