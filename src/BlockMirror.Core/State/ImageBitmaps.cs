using BlockMirror.Core.Bitmaps;
using BlockMirror.Core.Images.Qcow2;
using BlockMirror.Core.Nodes;

namespace BlockMirror.Core.State;

/// <summary>
/// A node's persistent bitmaps where its image can hold them (a qcow2 version 3 image opened
/// read-write): what the image's bitmaps extension says, kept in step with the node. The image is the
/// place other programs look (qemu-img info, qemu-nbd -B, QEMU); BlockMirror's own record (journal +
/// checkpoints) stays the authority for the bitmaps it knows, and the image is compared with it at
/// load (BitmapPersistence.Unprovable). While the node is open its bitmaps are in use in the image;
/// a clean close stores their bits and clears the flag.
/// </summary>
internal static class ImageBitmaps
{
    /// <summary>The node's qcow2 image, when it can hold bitmaps and may be written.</summary>
    public static Qcow2Image? StorageOf(BlockNode node) =>
        node.Image is Qcow2Image { ReadOnly: false, CanStoreBitmaps: true } image ? image : null;

    /// <summary>
    /// Bitmaps the image held at open that the node does not have yet, made persistent bitmaps of the
    /// node as QEMU loads them: the stored bits, enabled when "auto"; one found in use (left by a writer
    /// that did not close the image) comes back inconsistent, disabled, with no bits, as in QEMU.
    /// </summary>
    public static List<DirtyBitmap> Adopt(BlockNode node, DateTime now, List<string> inconsistent)
    {
        var adopted = new List<DirtyBitmap>();
        if (node.Image is not Qcow2Image image)
            return adopted;
        foreach (var stored in image.BitmapsAtOpen)
        {
            if (node.FindBitmap(stored.Name) is not null || !Names.IsValid(stored.Name))
                continue; // one the service cannot name is left in the image as it is
            var bitmap = new DirtyBitmap(stored.Name, node.Size, stored.Granularity, persistent: true, disabled: !stored.Auto) { CreatedAt = now };
            if (stored.InUse)
            {
                const string reason = "the image holds it in use: the program that last wrote the image (e.g. a QEMU that crashed) did not store it";
                bitmap.MarkInconsistent(reason);
                bitmap.Disabled = true;
                inconsistent.Add($"{node.Name}/{stored.Name}: {reason}");
            }
            else
            {
                bitmap.Deserialize(image.ReadStoredBitmap(stored.Name));
            }
            node.AddBitmap(bitmap);
            adopted.Add(bitmap);
        }
        return adopted;
    }

    /// <summary>
    /// Stores every persistent bitmap of the node in the image. <paramref name="content"/> gives the
    /// bits to store (null keeps what the image holds); with <paramref name="inUse"/> the bitmaps stay
    /// marked in use (the node stays open), without it only inconsistent ones do. Bitmaps the image
    /// holds that the node does not know (names the service cannot use) are kept as they are.
    /// </summary>
    public static async ValueTask StoreAsync(BlockNode node, Func<DirtyBitmap, byte[]?> content, bool inUse, CancellationToken cancellationToken)
    {
        if (StorageOf(node) is not { } image)
            return;
        var list = new List<Qcow2BitmapToStore>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var b in node.Bitmaps.Where(b => b.Persistent))
        {
            names.Add(b.Name);
            list.Add(new Qcow2BitmapToStore(b.Name, b.Granularity, !b.Disabled, inUse || b.Inconsistent, b.Inconsistent ? null : content(b)));
        }
        foreach (var s in image.StoredBitmaps.Where(s => !names.Contains(s.Name) && !Names.IsValid(s.Name)))
            list.Add(new Qcow2BitmapToStore(s.Name, s.Granularity, s.Auto, s.InUse, null));
        await image.StoreBitmapsAsync(list, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Makes the image's directory name the node's persistent bitmaps (added in use with no bits,
    /// <paramref name="removed"/> removed at once, as QEMU removes them), keeping every stored bitmap's
    /// bits as they are. Done before the record is stored, so that the image never lacks a bitmap the
    /// record has: after a crash a bitmap missing from the image means someone removed it.
    /// </summary>
    public static async ValueTask SyncDirectoryAsync(BlockNode node, IReadOnlyCollection<string> removed, CancellationToken cancellationToken)
    {
        if (StorageOf(node) is not { } image)
            return;
        var stored = image.StoredBitmaps;
        var wanted = node.Bitmaps.Where(b => b.Persistent && !removed.Contains(b.Name)).ToList();
        var missing = wanted.Any(b => stored.All(s => s.Name != b.Name || s.Granularity != b.Granularity));
        var extra = stored.Any(s => removed.Contains(s.Name));
        if (!missing && !extra)
            return;
        if (!missing)
        {
            foreach (var name in removed)
                await image.RemoveBitmapAsync(name, cancellationToken).ConfigureAwait(false);
            return;
        }
        var list = new List<Qcow2BitmapToStore>();
        foreach (var b in wanted)
            list.Add(new Qcow2BitmapToStore(b.Name, b.Granularity, !b.Disabled, InUse: true, null));
        foreach (var s in stored.Where(s => !removed.Contains(s.Name) && wanted.All(b => b.Name != s.Name)))
            list.Add(new Qcow2BitmapToStore(s.Name, s.Granularity, s.Auto, s.InUse, null));
        await image.StoreBitmapsAsync(list, cancellationToken).ConfigureAwait(false);
    }
}
