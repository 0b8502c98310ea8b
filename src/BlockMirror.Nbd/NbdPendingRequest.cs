namespace BlockMirror.Nbd;

/// <summary>A request an <see cref="NbdClient"/> sent and awaits the reply of, keyed by its cookie.</summary>
internal sealed class NbdPendingRequest(ushort type, long offset, long length, Memory<byte> readBuffer)
{
    public ushort Type { get; } = type;

    public long Offset { get; } = offset;

    public long Length { get; } = length;

    /// <summary>Where a READ's data lands (the reader writes straight into it).</summary>
    public Memory<byte> ReadBuffer { get; } = readBuffer;

    public TaskCompletionSource Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>First error the server reported (0 = none).</summary>
    public uint Errno { get; set; }

    public string? ErrorMessage { get; set; }

    /// <summary>Bytes of READ content covered by data and hole chunks.</summary>
    public long Covered { get; set; }

    /// <summary>Block-status descriptors by context id.</summary>
    public Dictionary<uint, List<NbdExtent>>? Status { get; set; }
}
