namespace BlockMirror.Core.Images;

/// <summary>struct iovec (pointer, length), as preadv2 takes it.</summary>
internal unsafe struct IoVector
{
    public void* Base;
    public nuint Length;
}
