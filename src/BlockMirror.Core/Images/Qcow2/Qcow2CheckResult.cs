namespace BlockMirror.Core.Images.Qcow2;

/// <summary>
/// What a consistency check found, in <c>qemu-img check</c>'s terms: corruptions (a cluster used more
/// often than its refcount says, a wrong copied flag, an entry that cannot be right) and leaks
/// (clusters with a refcount nothing uses). An image that only leaks is consistent.
/// </summary>
public sealed record Qcow2CheckResult(int Corruptions, int Leaks, IReadOnlyList<string> Messages)
{
    public bool IsClean => Corruptions == 0 && Leaks == 0;
}
