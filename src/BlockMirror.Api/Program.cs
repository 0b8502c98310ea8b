using BlockMirror.Api.Endpoints;
using BlockMirror.Api.Infrastructure;

var builder = WebApplication.CreateBuilder(new WebApplicationOptions
{
    Args = args,
    ContentRootPath = ContentRootLocator.Find(),
});
builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = 1L << 20);
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
app.MapEventEndpoints();
app.MapHealthChecks("/healthz");

app.Run();
