using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage.ValueConversion;

namespace BlockMirror.Api.Data;

/// <summary>The service's durable record: nodes, bitmaps, NBD exports, jobs and events.</summary>
public sealed class BlockMirrorDbContext(DbContextOptions<BlockMirrorDbContext> options) : DbContext(options)
{
    public DbSet<NodeEntity> Nodes => Set<NodeEntity>();
    public DbSet<BitmapEntity> Bitmaps => Set<BitmapEntity>();
    public DbSet<EventEntity> Events => Set<EventEntity>();
    public DbSet<JobEntity> Jobs => Set<JobEntity>();
    public DbSet<ExportEntity> Exports => Set<ExportEntity>();

    protected override void ConfigureConventions(ModelConfigurationBuilder configurationBuilder)
    {
        // SQLite returns DateTime with Kind=Unspecified; everything stored is UTC.
        configurationBuilder.Properties<DateTime>().HaveConversion<UtcConverter>();
        configurationBuilder.Properties<DateTime?>().HaveConversion<UtcConverter>();
    }

    protected override void OnModelCreating(ModelBuilder modelBuilder)
    {
        modelBuilder.Entity<NodeEntity>(e =>
        {
            e.ToTable("nodes");
            e.HasKey(x => x.Name);
        });
        modelBuilder.Entity<BitmapEntity>(e =>
        {
            e.ToTable("bitmaps");
            e.HasKey(x => new { x.Node, x.Name });
        });
        modelBuilder.Entity<ExportEntity>(e =>
        {
            e.ToTable("exports");
            e.HasKey(x => x.Name);
        });
        modelBuilder.Entity<EventEntity>(e =>
        {
            e.ToTable("events");
            e.HasKey(x => x.Id);
            e.Property(x => x.Id).ValueGeneratedNever();
        });
        modelBuilder.Entity<JobEntity>(e =>
        {
            e.ToTable("jobs");
            e.HasKey(x => x.Uid);
            e.HasIndex(x => new { x.Id, x.Dismissed });
            // The history lists concluded jobs newest first (GET /jobs?include=history).
            e.HasIndex(x => new { x.Status, x.FinishedAt });
        });
    }

    private sealed class UtcConverter() : ValueConverter<DateTime, DateTime>(
        v => v.Kind == DateTimeKind.Utc ? v : v.ToUniversalTime(),
        v => DateTime.SpecifyKind(v, DateTimeKind.Utc));
}
