using BlockMirror.Api.Endpoints;
using BlockMirror.Api.Infrastructure;

var builder = WebApplication.CreateBuilder(new WebApplicationOptions
{
    Args = args,
    ContentRootPath = ContentRootLocator.Find(),
});
builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = 1L << 20);
// The content root is the folder of appsettings.json (the repository root in a checkout), not the
// project: the build's static web assets manifest maps the dashboard to src/BlockMirror.Api/wwwroot
// in every environment (a published app has no manifest and serves its own wwwroot).
builder.WebHost.UseStaticWebAssets();
ListenGuard.Check(builder.Configuration);
builder.AddBlockMirror();

var app = builder.Build();

app.UseExceptionHandler();
app.UseStatusCodePages();
app.UseMiddleware<ApiKeyMiddleware>();
app.UseMiddleware<BodySizeLimitMiddleware>();
app.UseDefaultFiles();
app.UseStaticFiles();
app.UseSwagger();
app.UseSwaggerUI(o => o.SwaggerEndpoint("/swagger/v1/swagger.json", "BlockMirror v1"));

app.MapNodeEndpoints();
app.MapBitmapEndpoints();
app.MapTransactionEndpoints();
app.MapJobEndpoints();
app.MapExportEndpoints();
app.MapEventEndpoints();
app.MapHealthChecks("/healthz");
app.MapBlockMirrorMetrics();

app.Run();
