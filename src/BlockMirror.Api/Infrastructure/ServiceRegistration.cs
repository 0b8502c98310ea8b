using BlockMirror.Api.Data;
using BlockMirror.Api.Events;
using BlockMirror.Api.Options;
using BlockMirror.Core;
using BlockMirror.Core.Images;
using BlockMirror.Core.Nodes;
using BlockMirror.Core.State;
using Microsoft.Data.Sqlite;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;

namespace BlockMirror.Api.Infrastructure;

/// <summary>Wires the host: options, SQLite, the block layer, events, problem details, OpenAPI.</summary>
public static class ServiceRegistration
{
    public static void AddBlockMirror(this WebApplicationBuilder builder)
    {
        var services = builder.Services;
        services.Configure<StorageOptions>(builder.Configuration.GetSection(StorageOptions.Section));
        services.Configure<NbdOptions>(builder.Configuration.GetSection(NbdOptions.Section));
        services.Configure<AuthOptions>(builder.Configuration.GetSection(AuthOptions.Section));
        services.Configure<LimitsOptions>(builder.Configuration.GetSection(LimitsOptions.Section));
        services.Configure<JobsOptions>(builder.Configuration.GetSection(JobsOptions.Section));
        services.Configure<BitmapsOptions>(builder.Configuration.GetSection(BitmapsOptions.Section));
        services.AddSingleton(TimeProvider.System);
        // Owned by this process from StartupChecks on (before any file of the folder is read) until
        // the host is disposed; created first, so disposed after everything that writes the folder.
        services.AddSingleton(sp => new DataDirectoryLock(DataDirectoryLock.DatabaseFile(
            ResolveConnectionString(sp.GetRequiredService<IConfiguration>(), builder.Environment.ContentRootPath))));
        services.AddSingleton(sp => ConnectionBudget.Create(
            sp.GetRequiredService<IOptions<LimitsOptions>>().Value, sp.GetRequiredService<IOptions<NbdOptions>>().Value));
        services.AddSingleton<IConfigureOptions<Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions>, KestrelLimitsSetup>();

        services.ConfigureHttpJsonOptions(o => JsonSetup.Configure(o.SerializerOptions));
        // A request that cannot be bound throws, so BlockExceptionHandler can name the field
        // (RequestProblems) instead of the framework answering a bare 400.
        services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        services.AddSingleton(JsonSetup.Create());
        services.AddProblemDetails(o => o.CustomizeProblemDetails = c =>
        {
            // Every problem carries a stable code, also those the framework writes (404 route, 405, 415).
            var status = c.ProblemDetails.Status ?? c.HttpContext.Response.StatusCode;
            if (!c.ProblemDetails.Extensions.ContainsKey("code"))
                c.ProblemDetails.Extensions["code"] = ProblemCodes.DefaultCode(status);
            c.ProblemDetails.Detail ??= ProblemCodes.DefaultDetail(status, c.HttpContext);
        });
        services.AddExceptionHandler<BlockExceptionHandler>();

        services.AddSingleton<StorageHealth>();
        services.AddSingleton<DatabaseFailureInterceptor>();
        services.AddDbContextFactory<BlockMirrorDbContext>((sp, o) =>
            o.UseSqlite(ResolveConnectionString(builder.Configuration, builder.Environment.ContentRootPath))
                .AddInterceptors(sp.GetRequiredService<DatabaseFailureInterceptor>()));
        services.AddHealthChecks()
            .AddDbContextCheck<BlockMirrorDbContext>("database")
            .AddCheck<ImageRootHealthCheck>("image-root")
            .AddCheck<StorageHealthCheck>("storage");
        services.AddBlockMirrorObservability();

        services.AddSingleton(sp =>
        {
            var storage = sp.GetRequiredService<IOptions<StorageOptions>>().Value;
            return new ImageRoot(Path.GetFullPath(storage.Root, builder.Environment.ContentRootPath)) 
            {
                AllowHardLinks = storage.AllowHardLinks,
                Devices = new DeviceAllowList(storage.Devices),
            };
        });
        services.AddSingleton<SqliteWriteLock>();
        services.AddSingleton<IBlockStore, EfBlockStore>();
        // The journal that keeps persistent bitmaps exact across a kill -9 lives beside the database
        // (its checkpoints are rows of it); a database in memory survives nothing, so it gets none.
        // Resolved lazily, like the connection string: a test host's settings apply by then. A null
        // registration makes GetService return null.
        services.AddSingleton<IBitmapJournal>(sp =>
            BitmapJournalPrefix(ResolveConnectionString(sp.GetRequiredService<IConfiguration>(), builder.Environment.ContentRootPath)) is { } prefix
                ? new FileBitmapJournal(prefix, time: sp.GetRequiredService<TimeProvider>(), logger: sp.GetRequiredService<ILogger<FileBitmapJournal>>())
                : null!);
        services.AddSingleton<EventHub>();
        services.AddSingleton<IJobStore, EfJobStore>();
        services.AddSingleton<JobHistory>();
        // Loaded (and checked) by StartupChecks before anything starts; nbds:// nodes connect with its client side.
        services.AddSingleton(sp => NbdTlsCredentials.Load(sp.GetRequiredService<IOptions<NbdOptions>>().Value, builder.Environment.ContentRootPath));
        services.AddSingleton<IRemoteImageOpener>(sp => new BlockMirror.Nbd.NbdRemoteImageOpener(
            new BlockMirror.Nbd.NbdClientOptions { Tls = sp.GetRequiredService<NbdTlsCredentials>().Client }));
        services.AddSingleton<NbdHost>();
        services.AddSingleton<IStartupParticipant>(sp => sp.GetRequiredService<NbdHost>());
        services.AddSingleton<Endpoints.ITransactionActionFactory, Endpoints.MirrorActionFactory>();
        services.AddSingleton(sp =>
        {
            var limits = sp.GetRequiredService<IOptions<LimitsOptions>>().Value;
            return new BlockLayer(
                sp.GetRequiredService<ImageRoot>(),
                sp.GetRequiredService<IBlockStore>(),
                sp.GetRequiredService<EventHub>(),
                sp.GetRequiredService<TimeProvider>(),
                sp.GetService<IRemoteImageOpener>(),
                sp.GetRequiredService<ILoggerFactory>())
            {
                JobStore = sp.GetRequiredService<IJobStore>(),
                Journal = sp.GetService<IBitmapJournal>(),
                ActivityLog = sp.GetRequiredService<IOptions<BitmapsOptions>>().Value.ToActivityLog(),
                BitmapMemoryBudget = limits.BitmapMemoryBytes,
                MaxTransactionActions = limits.MaxTransactionActions,
                ImageCheckInterval = sp.GetRequiredService<IOptions<StorageOptions>>().Value.ImageCheckInterval,
                AutoCopyModeWindow = sp.GetRequiredService<IOptions<JobsOptions>>().Value.AutoCopyModeWindow,
            };
        });

        services.AddEndpointsApiExplorer();
        services.AddSwaggerGen(OpenApiSetup.Configure);

        // The OpenAPI generators run Program: they must not migrate, open images or listen.
        if (!HostEnvironmentExtensions.IsDocumentGeneration())
            services.AddHostedService<StartupService>();
    }

    /// <summary>
    /// The bitmap journal's files for a database: <c>&lt;database file&gt;.bitmaps.*</c> beside it (so
    /// <c>blockmirror.db*</c> is the whole durable state); null for a database in memory. Whoever copies
    /// or moves a database must take them along.
    /// </summary>
    public static string? BitmapJournalPrefix(string connectionString)
    {
        var csb = new SqliteConnectionStringBuilder(connectionString);
        if (string.IsNullOrEmpty(csb.DataSource) || csb.DataSource == ":memory:" || csb.Mode == SqliteOpenMode.Memory)
            return null;
        return csb.DataSource + ".bitmaps";
    }

    /// <summary>Resolves a relative SQLite path against the content root (not the process's working directory) and creates its folder.</summary>
    public static string ResolveConnectionString(IConfiguration configuration, string contentRoot)
    {
        var raw = configuration.GetConnectionString("BlockMirror") ?? "Data Source=./data/blockmirror.db";
        var csb = new SqliteConnectionStringBuilder(raw);
        if (!string.IsNullOrEmpty(csb.DataSource) && csb.DataSource != ":memory:")
        {
            csb.DataSource = Path.GetFullPath(csb.DataSource, contentRoot);
            Directory.CreateDirectory(Path.GetDirectoryName(csb.DataSource)!);
        }
        return csb.ToString();
    }
}
