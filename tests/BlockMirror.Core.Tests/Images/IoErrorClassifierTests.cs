using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>ENOSPC as .NET really reports it: /dev/full fails every write with ENOSPC.</summary>
public sealed class IoErrorClassifierTests
{
    private static async Task<IOException> WriteToDevFullAsync()
    {
        using var handle = File.OpenHandle("/dev/full", FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        return await Assert.ThrowsAsync<IOException>(async () => await RandomAccess.WriteAsync(handle, new byte[4096], 0));
    }

    [Fact]
    public async Task A_real_ENOSPC_is_no_space()
    {
        var e = await WriteToDevFullAsync();

        Assert.Equal(28, e.HResult); // .NET on Unix: IOException.HResult is the raw errno
        Assert.True(IoErrorClassifier.IsNoSpace(e));
    }

    [Fact]
    public async Task A_wrapped_ENOSPC_is_no_space()
    {
        var e = await WriteToDevFullAsync();

        Assert.True(IoErrorClassifier.IsNoSpace(new AggregateException(new InvalidOperationException(), e)));
        Assert.True(IoErrorClassifier.IsNoSpace(new BlockException(BlockErrorKind.IoError, "io-error", "write failed", e)));
    }

    [Fact]
    public void Other_errors_are_not()
    {
        Assert.False(IoErrorClassifier.IsNoSpace(new IOException("Input/output error", 5)));
        Assert.False(IoErrorClassifier.IsNoSpace(new FileNotFoundException()));
        Assert.False(IoErrorClassifier.IsNoSpace(new InvalidOperationException()));
    }
}
