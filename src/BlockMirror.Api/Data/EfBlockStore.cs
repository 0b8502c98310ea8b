using BlockMirror.Core.State;
using Microsoft.EntityFrameworkCore;

namespace BlockMirror.Api.Data;

/// <summary>The block layer's store on SQLite. Each call is one short transaction (a checkpoint of several bitmaps included).</summary>
public sealed class EfBlockStore(IDbContextFactory<BlockMirrorDbContext> factory, SqliteWriteLock writeLock) : IBlockStore
{
    public async Task<IReadOnlyList<NodeRecord>> LoadNodesAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        return await db.Nodes.AsNoTracking().OrderBy(n => n.CreatedAt)
            .Select(n => new NodeRecord(n.Name, n.Driver, n.Path, n.Uri, n.Size, n.ReadOnly, n.CreatedAt, n.CacheDirect))
            .ToListAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<BitmapRecord>> LoadBitmapsAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        return await db.Bitmaps.AsNoTracking()
            .Select(b => new BitmapRecord(b.Node, b.Name, b.Granularity, b.Persistent, b.Disabled, b.Inconsistent, b.InUse,
                b.Content, b.ImageSize, b.ImageMtimeUtc, b.CreatedAt) { JournalSequence = b.JournalSeq, ImageInode = b.ImageInode, InconsistentReason = b.InconsistentReason })
            .ToListAsync(cancellationToken);
    }

    public async Task SaveNodeAsync(NodeRecord node, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        await ApplyNodeAsync(db, node, cancellationToken);
        using (await writeLock.AcquireAsync(cancellationToken))
            await db.SaveChangesAsync(cancellationToken);
    }

    public async Task DeleteNodeAsync(string name, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        using var held = await writeLock.AcquireAsync(cancellationToken);
        await using var tx = await db.Database.BeginTransactionAsync(cancellationToken);
        await db.Bitmaps.Where(b => b.Node == name).ExecuteDeleteAsync(cancellationToken);
        await db.Nodes.Where(n => n.Name == name).ExecuteDeleteAsync(cancellationToken);
        await tx.CommitAsync(cancellationToken);
    }

    public async Task SaveBitmapsAsync(IReadOnlyCollection<BitmapRecord> bitmaps, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        await ApplyBitmapsAsync(db, bitmaps, cancellationToken);
        using (await writeLock.AcquireAsync(cancellationToken))
            await db.SaveChangesAsync(cancellationToken);
    }

    public async Task SavePivotAsync(NodeRecord device, IReadOnlyCollection<BitmapRecord> deviceBitmaps, string consumedNode, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        await ApplyNodeAsync(db, device, cancellationToken);
        await ApplyBitmapsAsync(db, deviceBitmaps, cancellationToken);
        using var held = await writeLock.AcquireAsync(cancellationToken);
        await using var tx = await db.Database.BeginTransactionAsync(cancellationToken);
        await db.Bitmaps.Where(b => b.Node == consumedNode).ExecuteDeleteAsync(cancellationToken);
        await db.Nodes.Where(n => n.Name == consumedNode).ExecuteDeleteAsync(cancellationToken);
        await db.SaveChangesAsync(cancellationToken);
        await tx.CommitAsync(cancellationToken);
    }

    public async Task DeleteBitmapsAsync(IReadOnlyCollection<(string Node, string Name)> bitmaps, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        using var held = await writeLock.AcquireAsync(cancellationToken);
        await using var tx = await db.Database.BeginTransactionAsync(cancellationToken);
        foreach (var (node, name) in bitmaps)
            await db.Bitmaps.Where(b => b.Node == node && b.Name == name).ExecuteDeleteAsync(cancellationToken);
        await tx.CommitAsync(cancellationToken);
    }

    public async Task SaveBitmapChangesAsync(IReadOnlyCollection<BitmapRecord> saved, IReadOnlyCollection<(string Node, string Name)> deleted, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        var deletedKeys = deleted.ToHashSet();
        await ApplyBitmapsAsync(db, [.. saved.Where(b => !deletedKeys.Contains((b.Node, b.Name)))], cancellationToken);
        using var held = await writeLock.AcquireAsync(cancellationToken);
        await using var tx = await db.Database.BeginTransactionAsync(cancellationToken);
        foreach (var (node, name) in deleted)
            await db.Bitmaps.Where(b => b.Node == node && b.Name == name).ExecuteDeleteAsync(cancellationToken);
        await db.SaveChangesAsync(cancellationToken);
        await tx.CommitAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<ExportRecord>> LoadExportsAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        var rows = await db.Exports.AsNoTracking().OrderBy(e => e.CreatedAt).ToListAsync(cancellationToken);
        return [.. rows.Select(e => new ExportRecord(e.Name, e.Node, e.Writable, e.Bitmaps, e.CreatedAt))];
    }

    public async Task SaveExportAsync(ExportRecord export, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        db.Exports.Add(new ExportEntity
        {
            Name = export.Name,
            Node = export.Node,
            Writable = export.Writable,
            Bitmaps = [.. export.Bitmaps],
            CreatedAt = export.CreatedAt,
        });
        using (await writeLock.AcquireAsync(cancellationToken))
            await db.SaveChangesAsync(cancellationToken);
    }

    public async Task DeleteExportAsync(string name, CancellationToken cancellationToken = default)
    {
        await using var db = await factory.CreateDbContextAsync(cancellationToken);
        using (await writeLock.AcquireAsync(cancellationToken))
            await db.Exports.Where(e => e.Name == name).ExecuteDeleteAsync(cancellationToken);
    }

    /// <summary>Tracks the insert or update of a node row (saved by the caller).</summary>
    private static async Task ApplyNodeAsync(BlockMirrorDbContext db, NodeRecord node, CancellationToken cancellationToken)
    {
        var row = await db.Nodes.FindAsync([node.Name], cancellationToken);
        if (row is null)
        {
            row = new NodeEntity { Name = node.Name, Driver = node.Driver };
            db.Nodes.Add(row);
        }
        row.Driver = node.Driver;
        row.Path = node.Path;
        row.Uri = node.Uri;
        row.Size = node.Size;
        row.ReadOnly = node.ReadOnly;
        row.CacheDirect = node.CacheDirect;
        row.CreatedAt = node.CreatedAt;
    }

    /// <summary>Tracks the insert or update of bitmap rows (saved by the caller).</summary>
    private static async Task ApplyBitmapsAsync(BlockMirrorDbContext db, IReadOnlyCollection<BitmapRecord> bitmaps, CancellationToken cancellationToken)
    {
        foreach (var b in bitmaps)
        {
            var row = await db.Bitmaps.FindAsync([b.Node, b.Name], cancellationToken);
            if (row is null)
            {
                row = new BitmapEntity { Node = b.Node, Name = b.Name };
                db.Bitmaps.Add(row);
            }
            row.Granularity = b.Granularity;
            row.Persistent = b.Persistent;
            row.Disabled = b.Disabled;
            row.Inconsistent = b.Inconsistent;
            row.InconsistentReason = b.Inconsistent ? b.InconsistentReason : null;
            row.InUse = b.InUse;
            // A record with content is a checkpoint: content, the journal sequence it covers and the
            // image stamp travel together. Null content means "flags only, leave the checkpoint".
            if (b.Content is not null)
            {
                row.Content = b.Content;
                row.JournalSeq = b.JournalSequence;
                row.ImageSize = b.ImageSize;
                row.ImageMtimeUtc = b.ImageMtimeUtc;
                row.ImageInode = b.ImageInode;
            }
            row.CreatedAt = b.CreatedAt;
        }
    }
}
