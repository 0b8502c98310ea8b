namespace BlockMirror.Core.Images.Qcow2;

/// <summary>How to create a qcow2 image; the defaults are <c>qemu-img create -f qcow2</c>'s.</summary>
public sealed record Qcow2CreateOptions
{
    /// <summary>Virtual size in bytes (a multiple of 512).</summary>
    public required long Size { get; init; }

    /// <summary>A power of two from 512 to 2 MiB.</summary>
    public int ClusterSize { get; init; } = 65536;

    /// <summary>3 (compat 1.1, the default) or 2 (compat 0.10).</summary>
    public int Version { get; init; } = 3;

    /// <summary>The backing file name as stored in the image (QEMU resolves it relative to the image's directory).</summary>
    public string? BackingFile { get; init; }

    /// <summary>The backing file's format as stored in the image ("raw", "qcow2").</summary>
    public string? BackingFormat { get; init; }

    public bool LazyRefcounts { get; init; }

    /// <summary>Extended L2 entries (32 subclusters per cluster; clusters of at least 16 KiB).</summary>
    public bool ExtendedL2 { get; init; }

    /// <summary>Refcount width: 1, 2, 4, 8, 16 (the default), 32 or 64 bits.</summary>
    public int RefcountBits { get; init; } = 16;

    public Qcow2Preallocation Preallocation { get; init; } = Qcow2Preallocation.Off;
}
