using BenchmarkDotNet.Attributes;
using BlockMirror.Core.Images;
using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Bench;

/// <summary>
/// The per-request cost of the qcow2 driver over the raw driver, without flushes: one 4 KiB read,
/// one 4 KiB overwrite of allocated data, one block-status lookup, at queue depth 1, on a 256 MiB
/// image in the page cache (so the file system's cost is the same for both and what differs is the
/// driver: cluster lock, metadata lock, L2 lookup). Allocated bytes are per request.
/// </summary>
[MemoryDiagnoser]
[ShortRunJob]
public class ImageRequestBenchmarks
{
    private const long Size = 256L << 20;
    private const int Requests = 4096;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bm-image-request-bench");
    private readonly byte[] _block = new byte[4096];
    private IBlockImage _image = null!;
    private long[] _offsets = null!;

    [Params("raw", "qcow2")]
    public string Driver { get; set; } = "raw";

    [GlobalSetup]
    public void Setup()
    {
        Directory.CreateDirectory(_dir);
        var path = Path.Combine(_dir, "image." + Driver);
        File.Delete(path);
        _image = Driver == "raw" ? RawFileImage.Create(path, Size) : Qcow2Image.Create(path, Size);
        var fill = new byte[1 << 20];
        new Random(1).NextBytes(fill);
        for (long pos = 0; pos < Size; pos += fill.Length)
            _image.WriteAsync(pos, fill).AsTask().GetAwaiter().GetResult();
        _image.FlushAsync().AsTask().GetAwaiter().GetResult();
        var rng = new Random(2);
        _offsets = Enumerable.Range(0, Requests).Select(_ => rng.NextInt64(Size / 4096) * 4096).ToArray();
        new Random(3).NextBytes(_block);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _image.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark(OperationsPerInvoke = Requests)]
    public async Task Read_4KiB()
    {
        foreach (var offset in _offsets)
            await _image.ReadAsync(offset, _block);
    }

    [Benchmark(OperationsPerInvoke = Requests)]
    public async Task Overwrite_4KiB()
    {
        foreach (var offset in _offsets)
            await _image.WriteAsync(offset, _block);
    }

    [Benchmark(OperationsPerInvoke = Requests)]
    public async Task BlockStatus()
    {
        foreach (var offset in _offsets)
            await _image.GetBlockStatusAsync(offset, 1 << 20);
    }
}
