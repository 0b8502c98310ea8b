using BlockMirror.Core.Images;

namespace BlockMirror.Core.Tests.Images;

/// <summary>
/// Storage:Devices: a path is let through only when it and the path it resolves to both match a
/// pattern; globs never cross a '/'; relative patterns are refused at startup. Plain files and
/// symlinks stand in for devices here (the allow list resolves names; the image checks the type).
/// </summary>
public sealed class DeviceAllowListTests : IDisposable
{
    private readonly TempImageDirectory _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>The temp folder by its real path, as realpath(3) reports what lies in it.</summary>
    private string Real(string name) => Path.Combine(ImageRoot.RealPathOf(_dir.PathOf(".")), name);

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    [InlineData("dev/sdb")]
    [InlineData("*")]
    public void A_pattern_that_is_not_absolute_is_refused_at_startup(string pattern) =>
        Assert.Throws<ArgumentException>(() => new DeviceAllowList([pattern]));

    [Theory]
    [InlineData("/dev/vg0/data", true)]
    [InlineData("/dev/vg0/vm-1", true)]
    [InlineData("/dev/vg0/sub/data", false)]
    [InlineData("/dev/vg0/.hidden", false)]
    [InlineData("/dev/vg1/data", false)]
    [InlineData("/dev/sdb", true)]
    [InlineData("/dev/sdb1", false)]
    [InlineData("/dev/sda", false)]
    public void Globs_match_within_one_path_component(string path, bool matches)
    {
        var list = new DeviceAllowList(["/dev/vg0/*", "/dev/sd[b-c]"]);
        Assert.Equal(matches, list.Matches(path));
    }

    [Fact]
    public void An_empty_list_allows_nothing_and_says_so()
    {
        var e = Assert.Throws<BlockException>(() => DeviceAllowList.None.Resolve("/dev/sda"));
        Assert.Equal("device-not-allowed", e.Code);
        Assert.Contains("Storage:Devices is empty", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_link_is_allowed_only_when_it_and_where_it_leads_both_match()
    {
        Directory.CreateDirectory(Real("by-id"));
        Directory.CreateDirectory(Real("dev"));
        File.WriteAllBytes(Real("dev/allowed"), []);
        File.WriteAllBytes(Real("dev/other"), []);
        File.CreateSymbolicLink(Real("by-id/good"), Real("dev/allowed"));
        File.CreateSymbolicLink(Real("by-id/bad"), Real("dev/other"));
        Directory.CreateDirectory(Real("elsewhere"));
        File.CreateSymbolicLink(Real("elsewhere/good"), Real("dev/allowed"));
        var list = new DeviceAllowList([Real("by-id/*"), Real("dev/allowed")]);

        Assert.Equal(Real("dev/allowed"), list.Resolve(Real("by-id/good")));
        Assert.Equal(Real("dev/allowed"), list.Resolve(Real("dev/allowed")));
        Assert.Equal("device-not-allowed", Assert.Throws<BlockException>(() => list.Resolve(Real("by-id/bad"))).Code);
        Assert.Equal("device-not-allowed", Assert.Throws<BlockException>(() => list.Resolve(Real("elsewhere/good"))).Code);
        Assert.Equal("device-not-allowed", Assert.Throws<BlockException>(() => list.Resolve(Real("dev/other"))).Code);
        Assert.Equal("image-not-found", Assert.Throws<BlockException>(() => list.Resolve(Real("by-id/missing"))).Code);
    }

    [Theory]
    [InlineData("/by-id/../dev/allowed")]
    [InlineData("/by-id/./good")]
    [InlineData("//by-id/good")]
    [InlineData("/by-id/good/")]
    public void A_path_not_in_its_plain_form_is_refused_before_it_is_resolved(string suffix)
    {
        var list = new DeviceAllowList([Real("by-id/*"), Real("dev/*")]);
        var path = ImageRoot.RealPathOf(_dir.PathOf(".")) + suffix;
        var e = Assert.Throws<BlockException>(() => list.Resolve(path));
        Assert.Equal("device-not-allowed", e.Code);
        Assert.Contains("plain form", e.Message, StringComparison.Ordinal);
    }
}
