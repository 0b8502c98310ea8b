using BlockMirror.Core.Images.Qcow2;

namespace BlockMirror.Core.Tests.Images.Qcow2;

public sealed class Qcow2SmokeTests
{
    [Fact]
    public async Task WriteReadReopen()
    {
        var file = Qcow2TestImages.Create(new Qcow2CreateOptions { Size = 8 << 20 });
        var rng = new Random(1);
        var data = Qcow2TestImages.Pattern(rng, 100_000);
        await using (var image = Qcow2TestImages.Open(file))
        {
            await image.WriteAsync(12345, data);
            var back = new byte[data.Length];
            await image.ReadAsync(12345, back);
            Assert.Equal(data, back);
        }
        Assert.True(Qcow2Check.Run(file).IsClean, string.Join("\n", Qcow2Check.Run(file).Messages));
        await using (var image = Qcow2TestImages.Open(file))
        {
            var back = new byte[data.Length];
            await image.ReadAsync(12345, back);
            Assert.Equal(data, back);
            var zero = new byte[12345];
            await image.ReadAsync(0, zero);
            Assert.All(zero, b => Assert.Equal(0, b));
        }
    }
}
