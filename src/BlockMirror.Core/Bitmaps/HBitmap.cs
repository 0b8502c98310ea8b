using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace BlockMirror.Core.Bitmaps;

/// <summary>
/// A hierarchical bitmap in the manner of QEMU's <c>util/hbitmap.c</c>: the last level is a
/// plain array of 64-bit words, and every upper level holds one bit per word of the level
/// below, set iff that word is non-zero. Searching for the next set bit therefore skips
/// empty 64-word (and 4096-word, …) regions in one step instead of scanning them.
/// </summary>
/// <remarks>
/// Invariants: bits at or beyond <see cref="Length"/> are always zero (so serialization and
/// hashing can use the raw words), the top level is exactly one word, and <see cref="Count"/>
/// equals the number of set bits of the last level. Not thread-safe; callers lock
/// (see <see cref="DirtyBitmap"/>).
/// </remarks>
public sealed class HBitmap
{
    /// <summary>
    /// Largest supported length in bits (2^36, i.e. 2^30 words = 8 GiB of last level): stays
    /// well inside .NET's array size limit while covering 2^34 bits (1 PiB @ 64 KiB) with room.
    /// </summary>
    public const long MaxLength = 1L << 36;

    private const int BitsPerLevel = 6;
    private const int WordMask = 63;

    // _levels[0] is the single top word; _levels[^1] is the last level holding the real bits.
    private readonly ulong[][] _levels;
    private readonly ulong[] _words;
    private long _count;

    /// <summary>Creates an all-clear bitmap of <paramref name="length"/> bits (0 allowed).</summary>
    public HBitmap(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxLength);
        Length = length;
        _levels = AllocateLevels(length);
        _words = _levels[^1];
    }

    private HBitmap(long length, ulong[][] levels, long count)
    {
        Length = length;
        _levels = levels;
        _words = levels[^1];
        _count = count;
    }

    /// <summary>Number of bits.</summary>
    public long Length { get; }

    /// <summary>Number of set bits, maintained incrementally (O(1)).</summary>
    public long Count => _count;

    /// <summary>
    /// Bytes needed by <see cref="Serialize"/>: whole 64-bit words. Throws
    /// <see cref="OverflowException"/> past 2^34 - 64 bits, where the form no longer fits a span.
    /// </summary>
    public int SerializedLength => checked((int)SerializedLengthFor(Length));

    /// <summary>Returns whether <paramref name="bit"/> is set.</summary>
    public bool Get(long bit)
    {
        if ((ulong)bit >= (ulong)Length)
        {
            ThrowBitOutOfRange(bit);
        }

        return ((_words[bit >> BitsPerLevel] >> (int)(bit & WordMask)) & 1) != 0;
    }

    /// <summary>Sets <paramref name="count"/> bits starting at <paramref name="start"/>.</summary>
    public void Set(long start, long count) => SetCountNew(start, count);

    /// <summary>
    /// Sets <paramref name="count"/> bits starting at <paramref name="start"/> and returns how
    /// many of them were clear before (callers journal exactly the newly dirtied granules).
    /// </summary>
    public long SetCountNew(long start, long count)
    {
        ValidateRange(start, count);
        if (count == 0)
        {
            return 0;
        }

        long last = start + count - 1;
        long added = SetBits(_words, start, last);
        if (added == 0)
        {
            // Nothing changed, so every word in the range was already non-zero and the upper
            // levels are already right: re-marking dirty data stays cheap.
            return 0;
        }

        _count += added;

        // Every last-level word touched is now non-zero, so the parent bits for the whole
        // word range are set; the same holds level after level up to the top.
        long a = start >> BitsPerLevel;
        long b = last >> BitsPerLevel;
        for (int level = _levels.Length - 2; level >= 0; level--)
        {
            SetBits(_levels[level], a, b);
            a >>= BitsPerLevel;
            b >>= BitsPerLevel;
        }

        return added;
    }

    /// <summary>Clears <paramref name="count"/> bits starting at <paramref name="start"/>.</summary>
    public void Reset(long start, long count)
    {
        ValidateRange(start, count);
        if (count == 0)
        {
            return;
        }

        long last = start + count - 1;
        long removed = ClearBits(_words, start, last);
        if (removed == 0)
        {
            return;
        }

        _count -= removed;

        // Within the touched word range [a, b] of a level, the interior words were fully
        // covered and are now zero; only the two edge words may still hold bits. So the words
        // that became zero form one contiguous range, whose parent bits we clear, and repeat.
        long a = start >> BitsPerLevel;
        long b = last >> BitsPerLevel;
        for (int level = _levels.Length - 2; level >= 0; level--)
        {
            ulong[] below = _levels[level + 1];
            long za = below[a] == 0 ? a : a + 1;
            long zb = below[b] == 0 ? b : b - 1;
            if (za > zb)
            {
                break;
            }

            ClearBits(_levels[level], za, zb);
            a = za >> BitsPerLevel;
            b = zb >> BitsPerLevel;
        }
    }

    /// <summary>Clears every bit (O(n/64) memset).</summary>
    public void ResetAll()
    {
        foreach (ulong[] level in _levels)
        {
            Array.Clear(level);
        }

        _count = 0;
    }

    /// <summary>Sets every bit below <see cref="Length"/>.</summary>
    public void SetAll()
    {
        if (Length == 0)
        {
            return;
        }

        long fullWords = Length >> BitsPerLevel;
        _words.AsSpan(0, (int)fullWords).Fill(ulong.MaxValue);
        int tail = (int)(Length & WordMask);
        if (tail != 0)
        {
            _words[fullWords] = (1UL << tail) - 1;
        }

        RebuildUpperLevels();
        _count = Length;
    }

    /// <summary>
    /// Index of the first set bit at or after <paramref name="from"/>, or -1 if there is none
    /// (<paramref name="from"/> may equal <see cref="Length"/>, which gives -1).
    /// </summary>
    public long NextSet(long from)
    {
        ValidateFrom(from);
        long r = FindSet(from, Length);
        return r == Length ? -1 : r;
    }

    /// <summary>
    /// Index of the first clear bit at or after <paramref name="from"/>, or -1 if there is none.
    /// </summary>
    public long NextClear(long from)
    {
        ValidateFrom(from);
        long r = FindClear(from, Length);
        return r == Length ? -1 : r;
    }

    /// <summary>
    /// Finds the first run of set bits at or after <paramref name="from"/>, at most
    /// <paramref name="maxCount"/> bits long (QEMU's <c>hbitmap_next_dirty_area</c>).
    /// </summary>
    public bool NextSetRun(long from, long maxCount, out long start, out long count)
    {
        ValidateFrom(from);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCount, 1);
        long s = FindSet(from, Length);
        if (s == Length)
        {
            start = -1;
            count = 0;
            return false;
        }

        long limit = s + Math.Min(maxCount, Length - s);
        start = s;
        count = FindClear(s, limit) - s;
        return true;
    }

    /// <summary>ORs <paramref name="other"/> (same <see cref="Length"/>) into this bitmap.</summary>
    public void Or(HBitmap other)
    {
        ArgumentNullException.ThrowIfNull(other);
        RequireSameLength(other);
        if (ReferenceEquals(other, this))
        {
            return;
        }

        // An upper word of a|b is non-zero iff either input's is, so OR-ing every level keeps
        // the hierarchy exact; only the count needs recomputing on the last level.
        for (int level = 0; level < _levels.Length - 1; level++)
        {
            OrWords(_levels[level], other._levels[level]);
        }

        _count = OrWordsCount(_words, other._words);
    }

    /// <summary>Replaces this bitmap's content with <paramref name="other"/>'s (same length).</summary>
    public void CopyFrom(HBitmap other)
    {
        ArgumentNullException.ThrowIfNull(other);
        RequireSameLength(other);
        if (ReferenceEquals(other, this))
        {
            return;
        }

        for (int level = 0; level < _levels.Length; level++)
        {
            other._levels[level].AsSpan().CopyTo(_levels[level]);
        }

        _count = other._count;
    }

    /// <summary>Returns an independent copy.</summary>
    public HBitmap Clone()
    {
        var levels = new ulong[_levels.Length][];
        for (int i = 0; i < levels.Length; i++)
        {
            // Uninitialized: the copy overwrites every word, so zeroing 2 MiB first is waste.
            levels[i] = GC.AllocateUninitializedArray<ulong>(_levels[i].Length);
            _levels[i].AsSpan().CopyTo(levels[i]);
        }

        return new HBitmap(Length, levels, _count);
    }

    /// <summary>
    /// Writes the last-level words little-endian into <paramref name="dest"/> (at least
    /// <see cref="SerializedLength"/> bytes); bits beyond <see cref="Length"/> are zero.
    /// </summary>
    public void Serialize(Span<byte> dest)
    {
        int n = SerializedLength;
        if (dest.Length < n)
        {
            throw new ArgumentException($"Destination holds {dest.Length} bytes, {n} needed", nameof(dest));
        }

        ReadOnlySpan<ulong> words = _words.AsSpan(0, n / sizeof(ulong));
        if (BitConverter.IsLittleEndian)
        {
            MemoryMarshal.AsBytes(words).CopyTo(dest);
        }
        else
        {
            for (int i = 0; i < words.Length; i++)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(dest[(i * sizeof(ulong))..], words[i]);
            }
        }
    }

    /// <summary>
    /// Rebuilds a bitmap of <paramref name="length"/> bits from the form written by
    /// <see cref="Serialize"/>; <paramref name="src"/> must be exactly
    /// ceil(length/64)*8 bytes. Bits beyond <paramref name="length"/> are ignored.
    /// </summary>
    public static HBitmap Deserialize(long length, ReadOnlySpan<byte> src)
    {
        var bitmap = new HBitmap(length);
        long expected = SerializedLengthFor(length);
        if (src.Length != expected)
        {
            throw new ArgumentException($"Serialized bitmap of {length} bits must be {expected} bytes, got {src.Length}", nameof(src));
        }

        bitmap.LoadWords(src);
        return bitmap;
    }

    /// <summary>
    /// Lowercase hex SHA-256 of the serialized form, like QEMU's
    /// <c>x-debug-block-dirty-bitmap-sha256</c>: equal bits give equal hashes.
    /// </summary>
    public string Sha256Hex()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        // Word count rather than SerializedLength: a 2^34-bit bitmap is 2 GiB of words, one
        // more than a span of bytes can describe, so hash it in chunks.
        long wordCount = (Length + 63) >> BitsPerLevel;
        const int wordsPerChunk = 1 << 20;
        if (BitConverter.IsLittleEndian)
        {
            // The words already are the serialized bytes; hash them in place, no copy.
            for (long i = 0; i < wordCount; i += wordsPerChunk)
            {
                int n = (int)Math.Min(wordsPerChunk, wordCount - i);
                hash.AppendData(MemoryMarshal.AsBytes(_words.AsSpan((int)i, n)));
            }
        }
        else
        {
            Span<byte> chunk = stackalloc byte[4096];
            const int wordsPerBuffer = 4096 / sizeof(ulong);
            for (long i = 0; i < wordCount; i += wordsPerBuffer)
            {
                int n = (int)Math.Min(wordsPerBuffer, wordCount - i);
                for (int j = 0; j < n; j++)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(chunk[(j * sizeof(ulong))..], _words[i + j]);
                }

                hash.AppendData(chunk[..(n * sizeof(ulong))]);
            }
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>
    /// First set bit in [from, end), or <paramref name="end"/> if none. Caller guarantees
    /// 0 ≤ from ≤ end ≤ Length.
    /// </summary>
    internal long FindSet(long from, long end)
    {
        if (from >= end)
        {
            return end;
        }

        long r = NextSetInLevel(_levels.Length - 1, from);
        return r < 0 || r >= end ? end : r;
    }

    /// <summary>
    /// First clear bit in [from, end), or <paramref name="end"/> if none. Caller guarantees
    /// 0 ≤ from ≤ end ≤ Length. Scans last-level words only (like QEMU's next_zero), so the
    /// cost is bounded by the words between from and the answer (or end).
    /// </summary>
    internal long FindClear(long from, long end)
    {
        if (from >= end)
        {
            return end;
        }

        ulong[] words = _words;
        long wi = from >> BitsPerLevel;
        long lastWord = (end - 1) >> BitsPerLevel;
        ulong x = ~words[wi] & (ulong.MaxValue << (int)(from & WordMask));
        while (x == 0)
        {
            if (++wi > lastWord)
            {
                return end;
            }

            x = ~words[wi];
        }

        long r = (wi << BitsPerLevel) + BitOperations.TrailingZeroCount(x);
        return r >= end ? end : r;
    }

    /// <summary>Words of the last level (including the spare word of an empty bitmap).</summary>
    internal int WordCount => _words.Length;

    /// <summary>Copies the last-level words into <paramref name="dest"/> (≥ <see cref="WordCount"/>).</summary>
    internal void CopyWordsTo(Span<ulong> dest) => _words.AsSpan().CopyTo(dest);

    /// <summary>
    /// ORs raw last-level words (as written by <see cref="CopyWordsTo"/> from a bitmap of the
    /// same length) into this one. Lets a merge snapshot its source into a pooled buffer
    /// instead of cloning the whole hierarchy: the first upper level is computed in the same
    /// pass and the few levels above it are rebuilt from it.
    /// </summary>
    internal void OrWords(ReadOnlySpan<ulong> src)
    {
        if (src.Length < _words.Length)
        {
            throw new ArgumentException($"Source holds {src.Length} words, {_words.Length} needed", nameof(src));
        }

        if (_levels.Length == 1)
        {
            _words[0] |= src[0];
            _count = BitOperations.PopCount(_words[0]);
            return;
        }

        ulong[] words = _words;
        ulong[] parent = _levels[^2];
        long count = 0;
        for (int j = 0; j < parent.Length; j++)
        {
            int first = j << BitsPerLevel;
            int n = Math.Min(64, words.Length - first);
            Span<ulong> dest = words.AsSpan(first, n);
            ReadOnlySpan<ulong> from = src.Slice(first, n);
            ulong nonZero = 0;
            for (int k = 0; k < dest.Length; k++)
            {
                ulong w = dest[k] | from[k];
                dest[k] = w;
                count += BitOperations.PopCount(w);
                nonZero |= (w != 0 ? 1UL : 0UL) << k;
            }

            parent[j] = nonZero;
        }

        _count = count;
        RebuildUpperLevels(_levels.Length - 3);
    }

    /// <summary>Number of upper+last levels (for tests of the hierarchy).</summary>
    internal int LevelCount => _levels.Length;

    /// <summary>Checks every invariant from scratch; for tests only (O(n)).</summary>
    internal bool CheckInvariants()
    {
        long count = 0;
        foreach (ulong w in _words)
        {
            count += BitOperations.PopCount(w);
        }

        if (count != _count || _levels[0].Length != 1)
        {
            return false;
        }

        long tailBits = (long)_words.Length * 64 - Length;
        if (tailBits > 0 && (_words[^1] >> (int)(64 - tailBits)) != 0)
        {
            return false;
        }

        for (int level = 0; level < _levels.Length - 1; level++)
        {
            ulong[] up = _levels[level];
            ulong[] below = _levels[level + 1];
            for (long i = 0; i < (long)up.Length * 64; i++)
            {
                bool bit = ((up[i >> 6] >> (int)(i & 63)) & 1) != 0;
                bool nonZero = i < below.Length && below[i] != 0;
                if (bit != nonZero)
                {
                    return false;
                }
            }
        }

        return true;
    }

    internal static long SerializedLengthFor(long length) => ((length + 63) >> BitsPerLevel) * sizeof(ulong);

    /// <summary>Bytes the levels of a bitmap of <paramref name="length"/> bits take (as <see cref="AllocateLevels"/> sizes them).</summary>
    internal static long MemoryBytesFor(long length)
    {
        long words = Math.Max(1, (length + 63) >> BitsPerLevel);
        long total = words;
        while (words > 1)
        {
            words = (words + 63) >> BitsPerLevel;
            total += words;
        }

        return total * sizeof(ulong);
    }

    private void LoadWords(ReadOnlySpan<byte> src)
    {
        Span<ulong> words = _words.AsSpan(0, src.Length / sizeof(ulong));
        if (BitConverter.IsLittleEndian)
        {
            src.CopyTo(MemoryMarshal.AsBytes(words));
        }
        else
        {
            for (int i = 0; i < words.Length; i++)
            {
                words[i] = BinaryPrimitives.ReadUInt64LittleEndian(src[(i * sizeof(ulong))..]);
            }
        }

        // Keep the "nothing beyond Length" invariant whatever the source held there.
        int tail = (int)(Length & WordMask);
        if (tail != 0)
        {
            _words[^1] &= (1UL << tail) - 1;
        }

        long count = 0;
        foreach (ulong w in _words)
        {
            count += BitOperations.PopCount(w);
        }

        _count = count;
        RebuildUpperLevels();
    }

    private void RebuildUpperLevels() => RebuildUpperLevels(_levels.Length - 2);

    /// <summary>Recomputes levels <paramref name="highest"/> down to 0 from the level below each.</summary>
    private void RebuildUpperLevels(int highest)
    {
        for (int level = highest; level >= 0; level--)
        {
            ulong[] up = _levels[level];
            ulong[] below = _levels[level + 1];
            Array.Clear(up);
            for (int i = 0; i < below.Length; i++)
            {
                if (below[i] != 0)
                {
                    up[i >> BitsPerLevel] |= 1UL << (i & WordMask);
                }
            }
        }
    }

    /// <summary>
    /// Next set bit at or after <paramref name="pos"/> in one level, climbing to the parent
    /// level to skip runs of zero words. Recursion depth is at most the level count (≤ 7).
    /// </summary>
    private long NextSetInLevel(int level, long pos)
    {
        ulong[] words = _levels[level];
        long wi = pos >> BitsPerLevel;
        if (wi >= words.Length)
        {
            return -1;
        }

        ulong x = words[wi] & (ulong.MaxValue << (int)(pos & WordMask));
        if (x != 0)
        {
            return (wi << BitsPerLevel) + BitOperations.TrailingZeroCount(x);
        }

        if (level == 0)
        {
            return -1;
        }

        long next = NextSetInLevel(level - 1, wi + 1);
        if (next < 0)
        {
            return -1;
        }

        // The parent says word `next` is non-zero, so its lowest set bit is the answer.
        return (next << BitsPerLevel) + BitOperations.TrailingZeroCount(words[next]);
    }

    /// <summary>Sets bits [first, last] of <paramref name="words"/>; returns how many were clear.</summary>
    private static long SetBits(ulong[] words, long first, long last)
    {
        int w0 = (int)(first >> BitsPerLevel);
        int w1 = (int)(last >> BitsPerLevel);
        ulong headMask = ulong.MaxValue << (int)(first & WordMask);
        ulong tailMask = ulong.MaxValue >> (63 - (int)(last & WordMask));
        if (w0 == w1)
        {
            ulong mask = headMask & tailMask;
            ulong old = words[w0];
            words[w0] = old | mask;
            return BitOperations.PopCount(mask & ~old);
        }

        long added = BitOperations.PopCount(headMask & ~words[w0]);
        words[w0] |= headMask;

        Span<ulong> middle = words.AsSpan(w0 + 1, w1 - w0 - 1);
        for (int i = 0; i < middle.Length; i++)
        {
            added += 64 - BitOperations.PopCount(middle[i]);
            middle[i] = ulong.MaxValue;
        }

        added += BitOperations.PopCount(tailMask & ~words[w1]);
        words[w1] |= tailMask;
        return added;
    }

    /// <summary>Clears bits [first, last] of <paramref name="words"/>; returns how many were set.</summary>
    private static long ClearBits(ulong[] words, long first, long last)
    {
        int w0 = (int)(first >> BitsPerLevel);
        int w1 = (int)(last >> BitsPerLevel);
        ulong headMask = ulong.MaxValue << (int)(first & WordMask);
        ulong tailMask = ulong.MaxValue >> (63 - (int)(last & WordMask));
        if (w0 == w1)
        {
            ulong mask = headMask & tailMask;
            ulong old = words[w0];
            words[w0] = old & ~mask;
            return BitOperations.PopCount(mask & old);
        }

        long removed = BitOperations.PopCount(headMask & words[w0]);
        words[w0] &= ~headMask;

        Span<ulong> middle = words.AsSpan(w0 + 1, w1 - w0 - 1);
        for (int i = 0; i < middle.Length; i++)
        {
            removed += BitOperations.PopCount(middle[i]);
            middle[i] = 0;
        }

        removed += BitOperations.PopCount(tailMask & words[w1]);
        words[w1] &= ~tailMask;
        return removed;
    }

    private static void OrWords(Span<ulong> dest, ReadOnlySpan<ulong> src)
    {
        for (int i = 0; i < dest.Length; i++)
        {
            dest[i] |= src[i];
        }
    }

    private static long OrWordsCount(Span<ulong> dest, ReadOnlySpan<ulong> src)
    {
        long count = 0;
        for (int i = 0; i < dest.Length; i++)
        {
            ulong w = dest[i] | src[i];
            dest[i] = w;
            count += BitOperations.PopCount(w);
        }

        return count;
    }

    private static ulong[][] AllocateLevels(long length)
    {
        // At least one word so the top level exists even for an empty bitmap; the spare
        // word stays zero and is never serialized.
        long words = Math.Max(1, (length + 63) >> BitsPerLevel);
        var sizes = new List<long> { words };
        while (words > 1)
        {
            words = (words + 63) >> BitsPerLevel;
            sizes.Add(words);
        }

        var levels = new ulong[sizes.Count][];
        for (int i = 0; i < levels.Length; i++)
        {
            levels[i] = new ulong[sizes[sizes.Count - 1 - i]];
        }

        return levels;
    }

    private void ValidateRange(long start, long count)
    {
        if ((ulong)start > (ulong)Length)
        {
            throw new ArgumentOutOfRangeException(nameof(start), start, $"Start must be in [0, {Length}]");
        }

        if ((ulong)count > (ulong)(Length - start))
        {
            throw new ArgumentOutOfRangeException(nameof(count), count, $"Range [{start}, +{count}) exceeds length {Length}");
        }
    }

    private void ValidateFrom(long from)
    {
        if ((ulong)from > (ulong)Length)
        {
            throw new ArgumentOutOfRangeException(nameof(from), from, $"Position must be in [0, {Length}]");
        }
    }

    private void RequireSameLength(HBitmap other)
    {
        if (other.Length != Length)
        {
            throw new ArgumentException($"Bitmap lengths differ ({Length} vs {other.Length})", nameof(other));
        }
    }

    [DoesNotReturn]
    private void ThrowBitOutOfRange(long bit) =>
        throw new ArgumentOutOfRangeException(nameof(bit), bit, $"Bit must be in [0, {Length})");
}
