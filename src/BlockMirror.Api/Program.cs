using BlockMirror.Api.Endpoints;
using BlockMirror.Api.Infrastructure;

// File I/O of images runs on the thread pool; with 2 cores it starts with 2 workers, so 16 copy
// operations in flight would find ~1.5 of them really outstanding (measured in bench/README.md).
ThreadPool.GetMinThreads(out var workers, out var completion);
ThreadPool.SetMinThreads(Math.Max(workers, 32), completion);

var stopRequested = false;
try
{
    var builder = WebApplication.CreateBuilder(new WebApplicationOptions
    {
        // The content root holds ./data: a configuration file watcher on it would wake for every image
        // write (842 events per GiB measured). Configuration is read at start; restart to change it.
        Args = ["--hostBuilder:reloadConfigOnChange=false", .. args],
        ContentRootPath = ContentRootLocator.Find(),
    });
    builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = 1L << 20);
    // The content root is the folder of appsettings.json (the repository root in a checkout), not the
    // project: the build's static web assets manifest maps the dashboard to src/BlockMirror.Api/wwwroot
    // in every environment (a published app has no manifest and serves its own wwwroot).
    builder.WebHost.UseStaticWebAssets();
    // A start or stop that fails ends below with one line on stderr (ExitReport); the host's own
    // "Hosting failed to start" error would repeat it with a stack trace.
    builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.Critical);
    // Requests still running when a stop begins get this long (event streams end at once); the
    // block layer's clean stop that follows has its own bounds (StartupService).
    builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
    ListenGuard.Check(builder.Configuration);
    builder.AddBlockMirror();

    var app = builder.Build();
    app.Lifetime.ApplicationStopping.Register(() => stopRequested = true);
    // First, before the endpoints below resolve the block layer: nothing may touch the data folder
    // before this process owns it, and what is created first is disposed last.
    StartupChecks.Run(app.Services);

    app.UseExceptionHandler();
    app.UseStatusCodePages();
    app.UseMiddleware<ApiKeyMiddleware>();
    app.UseMiddleware<BodySizeLimitMiddleware>();
    app.UseDefaultFiles();
    app.UseStaticFiles();
    app.UseSwagger();
    app.UseSwaggerUI(o => o.SwaggerEndpoint("/swagger/v1/swagger.json", "BlockMirror v1"));

    // Every endpoint checks its request's required members before it runs (RequestValidationFilter).
    var api = app.MapGroup("").AddEndpointFilter<RequestValidationFilter>();
    api.MapNodeEndpoints();
    api.MapBitmapEndpoints();
    api.MapTransactionEndpoints();
    api.MapJobEndpoints();
    api.MapExportEndpoints();
    api.MapEventEndpoints();
    app.MapHealthChecks("/healthz");
    app.MapBlockMirrorMetrics();

    await using (app)
    {
        try
        {
            await app.StartAsync();
        }
        catch
        {
            // The host does not stop what it started when a later part fails (Kestrel cannot bind
            // after the block layer was loaded): stop it here, so the layer's clean stop runs while
            // the database can still be reached, not in the services' disposal.
            await app.StopAsync();
            throw;
        }
        await app.WaitForShutdownAsync();
    }
    return ExitCodes.Success;
}
catch (Exception e) when (ExitReport.OwnsProcess)
{
    var report = ExitReport.Of(e, stopRequested);
    Console.Error.WriteLine(report.Text);
    return report.ExitCode;
}
