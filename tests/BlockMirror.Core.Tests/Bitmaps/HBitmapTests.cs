using BlockMirror.Core.Bitmaps;

namespace BlockMirror.Core.Tests.Bitmaps;

/// <summary>Edge cases of <see cref="HBitmap"/>: word boundaries, odd lengths, limits, serialization.</summary>
public class HBitmapTests
{
    [Fact]
    public void Empty_bitmap_has_nothing_and_serializes_to_nothing()
    {
        var b = new HBitmap(0);
        Assert.Equal(0, b.Length);
        Assert.Equal(0, b.Count);
        Assert.Equal(-1, b.NextSet(0));
        Assert.Equal(-1, b.NextClear(0));
        Assert.False(b.NextSetRun(0, 10, out _, out _));
        Assert.Equal(0, b.SerializedLength);
        b.Set(0, 0);
        b.Reset(0, 0);
        b.SetAll();
        Assert.Equal(0, b.Count);
        Assert.Equal(0, HBitmap.Deserialize(0, ReadOnlySpan<byte>.Empty).Length);
        // SHA-256 of zero bytes.
        Assert.Equal("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", b.Sha256Hex());
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Get(0));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(127)]
    [InlineData(128)]
    [InlineData(4097)]
    [InlineData(262_145)]
    public void SetAll_sets_exactly_length_bits(long length)
    {
        var b = new HBitmap(length);
        b.SetAll();
        Assert.Equal(length, b.Count);
        Assert.True(b.Get(length - 1));
        Assert.Equal(0, b.NextSet(0));
        Assert.Equal(-1, b.NextClear(0));
        Assert.True(b.CheckInvariants());
        Assert.True(b.NextSetRun(0, long.MaxValue, out long s, out long c));
        Assert.Equal((0L, length), (s, c));

        b.ResetAll();
        Assert.Equal(0, b.Count);
        Assert.Equal(-1, b.NextSet(0));
        Assert.True(b.CheckInvariants());
    }

    [Theory]
    [InlineData(0, 1)]
    [InlineData(63, 1)]
    [InlineData(63, 2)]
    [InlineData(64, 64)]
    [InlineData(1, 126)]
    [InlineData(0, 4096)]
    [InlineData(4095, 2)]
    [InlineData(100, 10_000)]
    public void Set_and_reset_across_word_boundaries(long start, long count)
    {
        var b = new HBitmap(20_000);
        Assert.Equal(count, b.SetCountNew(start, count));
        Assert.Equal(count, b.Count);
        Assert.Equal(0, b.SetCountNew(start, count));
        Assert.True(b.CheckInvariants());
        if (start > 0)
        {
            Assert.False(b.Get(start - 1));
        }

        Assert.True(b.Get(start));
        Assert.True(b.Get(start + count - 1));
        Assert.False(b.Get(start + count));
        Assert.Equal(start, b.NextSet(0));
        Assert.Equal(start + count, b.NextClear(start));

        // Resetting the interior leaves the two ends.
        if (count >= 3)
        {
            b.Reset(start + 1, count - 2);
            Assert.Equal(2, b.Count);
            Assert.Equal(start + count - 1, b.NextSet(start + 1));
            Assert.True(b.CheckInvariants());
        }

        b.Reset(start, count);
        Assert.Equal(0, b.Count);
        Assert.Equal(-1, b.NextSet(0));
        Assert.True(b.CheckInvariants());
    }

    [Fact]
    public void NextSet_and_NextClear_at_the_end()
    {
        var b = new HBitmap(65);
        Assert.Equal(-1, b.NextSet(65));
        Assert.Equal(-1, b.NextClear(65));
        Assert.Equal(64, b.NextClear(64));
        b.Set(64, 1);
        Assert.Equal(64, b.NextSet(0));
        Assert.Equal(-1, b.NextClear(64));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.NextSet(66));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.NextClear(-1));
    }

    [Fact]
    public void NextSet_skips_empty_regions_through_upper_levels()
    {
        var b = new HBitmap(1L << 24);
        Assert.Equal(4, b.LevelCount);
        b.Set((1L << 24) - 1, 1);
        b.Set(5_000_000, 1);
        Assert.Equal(5_000_000, b.NextSet(0));
        Assert.Equal((1L << 24) - 1, b.NextSet(5_000_001));
        Assert.Equal(-1, b.NextSet(1L << 24));
        b.Reset(5_000_000, 1);
        Assert.Equal((1L << 24) - 1, b.NextSet(0));
        Assert.True(b.CheckInvariants());
    }

    [Fact]
    public void NextSetRun_respects_limits()
    {
        var b = new HBitmap(1000);
        b.Set(10, 100);
        b.Set(200, 1);

        Assert.True(b.NextSetRun(0, 1, out long s, out long c));
        Assert.Equal((10L, 1L), (s, c));
        Assert.True(b.NextSetRun(0, 64, out s, out c));
        Assert.Equal((10L, 64L), (s, c));
        Assert.True(b.NextSetRun(0, 100, out s, out c));
        Assert.Equal((10L, 100L), (s, c));
        Assert.True(b.NextSetRun(0, long.MaxValue, out s, out c));
        Assert.Equal((10L, 100L), (s, c));
        Assert.True(b.NextSetRun(50, 1000, out s, out c));
        Assert.Equal((50L, 60L), (s, c));
        Assert.True(b.NextSetRun(110, 1000, out s, out c));
        Assert.Equal((200L, 1L), (s, c));
        Assert.False(b.NextSetRun(201, 1000, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.NextSetRun(0, 0, out _, out _));

        // A run reaching the end of a length that is not a multiple of 64.
        b.Set(990, 10);
        Assert.True(b.NextSetRun(300, 1000, out s, out c));
        Assert.Equal((990L, 10L), (s, c));
    }

    [Fact]
    public void Arguments_are_validated()
    {
        var b = new HBitmap(100);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HBitmap(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HBitmap(HBitmap.MaxLength + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(-1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(0, 101));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(100, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(1, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(50, long.MaxValue));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Reset(99, 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Get(100));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Get(-1));
        b.Set(100, 0);
        Assert.Throws<ArgumentException>(() => b.Or(new HBitmap(101)));
        Assert.Throws<ArgumentException>(() => b.CopyFrom(new HBitmap(99)));
        Assert.Throws<ArgumentException>(() => HBitmap.Deserialize(100, new byte[8]));
        Assert.Throws<ArgumentException>(() => b.Serialize(new byte[15]));
    }

    [Fact]
    public void Or_CopyFrom_and_Clone()
    {
        var a = new HBitmap(5000);
        var b = new HBitmap(5000);
        a.Set(0, 10);
        b.Set(5, 10);
        b.Set(4999, 1);
        a.Or(b);
        Assert.Equal(16, a.Count);
        Assert.Equal(4999, a.NextSet(15));
        Assert.True(a.CheckInvariants());

        HBitmap c = a.Clone();
        a.ResetAll();
        Assert.Equal(16, c.Count);
        Assert.True(c.Get(4999));

        a.CopyFrom(c);
        Assert.Equal(c.Sha256Hex(), a.Sha256Hex());
        Assert.True(a.CheckInvariants());

        a.Or(a);
        Assert.Equal(16, a.Count);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(65)]
    [InlineData(4097)]
    [InlineData(300_000)]
    [InlineData(1 << 20)]
    public void OrWords_matches_Or(long length)
    {
        var rnd = new Random((int)length);
        var a = new HBitmap(length);
        var b = new HBitmap(length);
        for (int i = 0; i < 50 && length > 0; i++)
        {
            long s = rnd.NextInt64(0, length);
            a.Set(s, rnd.NextInt64(1, Math.Min(length - s, 300) + 1));
            s = rnd.NextInt64(0, length);
            b.Set(s, rnd.NextInt64(1, Math.Min(length - s, 300) + 1));
        }

        HBitmap viaOr = a.Clone();
        viaOr.Or(b);
        var words = new ulong[b.WordCount];
        b.CopyWordsTo(words);
        a.OrWords(words);
        Assert.Equal(viaOr.Count, a.Count);
        Assert.Equal(viaOr.Sha256Hex(), a.Sha256Hex());
        Assert.True(a.CheckInvariants());
        Assert.Equal(viaOr.NextSet(0), a.NextSet(0));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(1000)]
    public void Serialization_round_trips_little_endian(long length)
    {
        var b = new HBitmap(length);
        b.Set(0, 1);
        b.Set(length - 1, 1);
        var data = new byte[b.SerializedLength];
        Assert.Equal((length + 63) / 64 * 8, data.Length);
        b.Serialize(data);
        Assert.Equal(1, data[0] & 1);
        long last = length - 1;
        Assert.Equal(1, (data[last / 8] >> (int)(last % 8)) & 1);

        HBitmap back = HBitmap.Deserialize(length, data);
        Assert.Equal(b.Count, back.Count);
        Assert.Equal(b.Sha256Hex(), back.Sha256Hex());
        Assert.True(back.CheckInvariants());
    }

    [Fact]
    public void Deserialize_ignores_bits_beyond_length()
    {
        byte[] data = Enumerable.Repeat((byte)0xFF, 16).ToArray();
        HBitmap b = HBitmap.Deserialize(70, data);
        Assert.Equal(70, b.Count);
        Assert.True(b.CheckInvariants());
        var again = new byte[16];
        b.Serialize(again);
        Assert.Equal(0x3F, again[8]);
        Assert.All(again[9..], x => Assert.Equal(0, x));
    }

    [Fact]
    public void Sha256_is_equal_for_equal_content_and_differs_otherwise()
    {
        var a = new HBitmap(10_000);
        var b = new HBitmap(10_000);
        Assert.Equal(a.Sha256Hex(), b.Sha256Hex());
        a.Set(1234, 100);
        Assert.NotEqual(a.Sha256Hex(), b.Sha256Hex());
        b.Set(1234, 50);
        b.Set(1284, 50);
        Assert.Equal(a.Sha256Hex(), b.Sha256Hex());
        b.Reset(9999, 1);
        Assert.Equal(a.Sha256Hex(), b.Sha256Hex());
        b.Set(9999, 1);
        Assert.NotEqual(a.Sha256Hex(), b.Sha256Hex());
        Assert.Matches("^[0-9a-f]{64}$", a.Sha256Hex());

        // The hash is over the serialized bytes.
        var data = new byte[a.SerializedLength];
        a.Serialize(data);
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(data)), a.Sha256Hex());
    }

    [Fact]
    public void Supports_2_pow_34_bits()
    {
        // 2 GiB of last level; untouched pages stay unbacked, so this is cheap in practice.
        const long length = 1L << 34;
        var b = new HBitmap(length);
        Assert.Equal(6, b.LevelCount);
        Assert.Equal(-1, b.NextSet(0));
        b.Set(length - 100, 100);
        b.Set(3L << 32, 70);
        Assert.Equal(170, b.Count);
        Assert.Equal(3L << 32, b.NextSet(0));
        Assert.Equal(length - 100, b.NextSet((3L << 32) + 70));
        Assert.True(b.NextSetRun(length - 200, 1000, out long s, out long c));
        Assert.Equal((length - 100, 100L), (s, c));
        b.Reset(length - 100, 100);
        Assert.Equal(-1, b.NextSet((3L << 32) + 70));
        Assert.Throws<OverflowException>(() => b.SerializedLength);
    }
}
