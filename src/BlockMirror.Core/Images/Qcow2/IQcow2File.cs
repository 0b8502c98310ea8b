namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// The file a qcow2 image lives in (QEMU's bs->file): positional I/O, flush and hole punching. A
/// seam so tests can stand a recording file in, to replay what a power cut could leave behind.
/// </summary>
internal interface IQcow2File : IAsyncDisposable
{
    /// <summary>For messages.</summary>
    string Path { get; }

    /// <summary>The current length of the file.</summary>
    long Length { get; }

    /// <summary>st_blocks × 512 of the file.</summary>
    long AllocatedBytes { get; }

    /// <summary>Reads exactly <c>buffer.Length</c> bytes; what lies past the end of the file reads as zeroes.</summary>
    void Read(long offset, Span<byte> buffer);

    void Write(long offset, ReadOnlySpan<byte> data);

    /// <summary>fdatasync.</summary>
    void Flush();

    void SetLength(long length);

    /// <inheritdoc cref="Read"/>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken = default);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default);

    /// <summary>fdatasync, off the caller's thread.</summary>
    ValueTask FlushAsync(CancellationToken cancellationToken = default);

    /// <summary>Deallocates the range so it reads as zeroes (advisory: a file system that cannot is fine).</summary>
    ValueTask PunchHoleAsync(long offset, long length, CancellationToken cancellationToken = default);
}
