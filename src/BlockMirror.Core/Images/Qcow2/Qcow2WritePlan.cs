namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// One step of a write under an exclusive cluster lock (QEMU's QCowL2Meta): either bytes that go in
/// place, or a run of guest clusters that get host clusters — new ones (<see cref="Keep"/> false) or
/// their own (a preallocated or partly allocated cluster) — with the copy-on-write range
/// [<see cref="CowStart"/>, <see cref="CowEnd"/>) around the written range, filled from the old
/// content of the first and last cluster.
/// </summary>
internal readonly record struct Qcow2WritePlan
{
    public bool InPlace { get; init; }

    /// <summary>First guest cluster.</summary>
    public long FirstCluster { get; init; }

    public int ClusterCount { get; init; }

    /// <summary>Host offset of the first cluster (of the in-place bytes when <see cref="InPlace"/>).</summary>
    public long Host { get; init; }

    public bool Keep { get; init; }

    /// <summary>The new clusters lie past everything the file ever held: they read as zeroes unwritten.</summary>
    public bool Pristine { get; init; }

    public long WriteStart { get; init; }
    public long WriteEnd { get; init; }
    public long CowStart { get; init; }
    public long CowEnd { get; init; }

    public ulong FirstEntry { get; init; }
    public ulong FirstBitmap { get; init; }
    public ulong LastEntry { get; init; }
    public ulong LastBitmap { get; init; }
}
