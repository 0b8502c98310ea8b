namespace BlockMirror.Core.Images;

/// <summary>
/// An image whose format keeps metadata in a cache of the process (qcow2's L2 tables and refcounts),
/// which a kill -9 loses, unlike the page cache. By default a write that changed metadata is
/// acknowledged only once that metadata is in the file (written through), so an acknowledged write
/// survives a kill -9 as a raw file's does. A node written only by its job (a mirror's target) does
/// not need that: nobody was promised its writes one by one, and the job flushes the target before
/// it reports the copy (READY, the pivot) or lets its bitmap clears become durable. The job defers
/// the write-through while it owns the node, and turns it back on before anyone else may write it.
/// </summary>
public interface IMetadataCachingImage : IBlockImage
{
    /// <summary>Whether a write's metadata is written through before the write is acknowledged.</summary>
    bool MetadataWriteThrough { get; }

    /// <summary>
    /// Keeps changed metadata in the cache until a flush (or until the cache evicts it, in the order a
    /// power cut needs), as QEMU's cache=writeback: allocating writes no longer wait for metadata I/O.
    /// </summary>
    void DeferMetadataWrites();

    /// <summary>
    /// Writes back the metadata waiting in the cache (without a final flush: the kill -9 guarantee needs
    /// the file to hold it, not the disk), then writes it through again for every later write.
    /// </summary>
    ValueTask WriteMetadataThroughAsync(CancellationToken cancellationToken = default);
}
