namespace BlockMirror.Interop.Tests.Nbd;

public sealed class NbdInteropFactAttributeTests
{
    [Fact]
    public void A_missing_tool_skips_naming_the_packages_unless_interop_is_required()
    {
        var attribute = new NbdInteropFactAttribute("qemu-img", "no-such-tool-for-blockmirror");
        if (InteropTools.Required)
        {
            Assert.Null(attribute.Skip);
            var e = Assert.Throws<InvalidOperationException>(() => InteropTools.Require("no-such-tool-for-blockmirror"));
            Assert.Contains("not installed", e.Message, StringComparison.Ordinal);
        }
        else
        {
            Assert.NotNull(attribute.Skip);
            Assert.Contains("no-such-tool-for-blockmirror", attribute.Skip, StringComparison.Ordinal);
            Assert.Contains("qemu-utils", attribute.Skip, StringComparison.Ordinal);
            Assert.Contains("libnbd-bin", attribute.Skip, StringComparison.Ordinal);
            Assert.Contains("nbdkit", attribute.Skip, StringComparison.Ordinal);
            Assert.DoesNotContain("qemu-img,", attribute.Skip, StringComparison.Ordinal); // present tools are not listed
        }
    }

    [Fact]
    public void Present_tools_do_not_skip()
    {
        if (InteropTools.Find("qemu-img") is null)
            return;
        Assert.Null(new NbdInteropFactAttribute("qemu-img").Skip);
    }
}
