using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Images;

/// <summary>
/// An image in a format with layers (QEMU's copy-on-write formats, qcow2): what this layer holds
/// apart from what it reads through to its backing image. A mirror with <c>sync: top</c> copies only
/// what the top layer holds (QEMU's bdrv_is_allocated_above with base = the backing image).
/// </summary>
public interface ILayeredImage : IBlockImage
{
    /// <summary>The format's name as a node shows it ("qcow2").</summary>
    string Format { get; }

    /// <summary>What unallocated ranges read through to, or null (they read as zeroes).</summary>
    IBlockImage? Backing { get; }

    /// <summary>Block status of this layer alone: data here, zeroes here, or nothing here (read from below).</summary>
    ValueTask<Qcow2LayerExtent> GetLayerStatusAsync(long offset, long maxLength, CancellationToken cancellationToken = default);
}
