using BlockMirror.Core.Tests.Jobs;
using BlockMirror.Core.Transactions;

namespace BlockMirror.Core.Tests.State;

/// <summary>
/// An export is served only once stored, and stops being served only once its record is gone: a
/// store that refuses either leaves the export as it was, served or not, so what a restart finds is
/// what the service showed.
/// </summary>
public sealed class ExportStoreFailureTests : IAsyncLifetime
{
    private readonly MirrorFixture _f = new();

    public async Task InitializeAsync()
    {
        await _f.CreateRawAsync("disk0", 1L << 20);
        await _f.Layer.BitmapActionAsync(new BitmapAddAction("disk0", "p", 65536, persistent: true, disabled: false));
    }

    public async Task DisposeAsync()
    {
        _f.Store.FailWrites = null;
        await _f.DisposeAsync();
    }

    [Fact]
    public async Task An_export_the_store_refuses_is_not_served_and_holds_nothing()
    {
        _f.Store.FailWrites = new IOException("disk I/O error");
        await Assert.ThrowsAsync<IOException>(() => _f.Layer.AddExportAsync("e", "disk0", writable: true, ["p"]));
        Assert.Null(_f.Layer.FindExport("e"));
        Assert.Empty(_f.Layer.GetNode("disk0").Exports);
        Assert.False(_f.Layer.GetNode("disk0").GetBitmap("p").Busy);
        Assert.Empty(_f.Store.ExportsSnapshot());

        // The name is free: the same call succeeds once the store takes it.
        _f.Store.FailWrites = null;
        await _f.Layer.AddExportAsync("e", "disk0", writable: true, ["p"]);
        Assert.Equal(["p"], _f.Store.ExportsSnapshot()["e"].Bitmaps);
    }

    [Fact]
    public async Task A_removal_the_store_refuses_keeps_the_export_served()
    {
        var export = await _f.Layer.AddExportAsync("e", "disk0", writable: true, ["p"]);
        _f.Store.FailWrites = new IOException("disk I/O error");
        await Assert.ThrowsAsync<IOException>(() => _f.Layer.RemoveExportAsync("e"));
        Assert.Same(export, _f.Layer.FindExport("e"));
        Assert.True(_f.Layer.GetNode("disk0").GetBitmap("p").Busy);
        Assert.True(_f.Store.ExportsSnapshot().ContainsKey("e"));

        _f.Store.FailWrites = null;
        await _f.Layer.RemoveExportAsync("e");
        Assert.Null(_f.Layer.FindExport("e"));
        Assert.False(_f.Layer.GetNode("disk0").GetBitmap("p").Busy);
        Assert.Empty(_f.Store.ExportsSnapshot());
    }

    [Fact]
    public async Task A_refused_export_is_refused_before_anything_is_stored()
    {
        await Assert.ThrowsAsync<BlockException>(() => _f.Layer.AddExportAsync("e", "disk0", writable: true, ["nope"]));
        await Assert.ThrowsAsync<BlockException>(() => _f.Layer.AddExportAsync("e", "nope", writable: true, []));
        Assert.Empty(_f.Store.ExportsSnapshot());
    }
}
