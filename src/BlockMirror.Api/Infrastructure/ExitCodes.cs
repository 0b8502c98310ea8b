namespace BlockMirror.Api.Infrastructure;

/// <summary>
/// The process's exit codes, from BSD's sysexits.h so service managers and scripts can tell a
/// configuration mistake (fix it) from a resource someone else holds (retry later) from data the
/// service refuses to touch (an operator must look).
/// </summary>
public static class ExitCodes
{
    /// <summary>Stopped cleanly (also after SIGTERM or Ctrl+C).</summary>
    public const int Success = 0;

    /// <summary>EX_DATAERR: the database does not match what the files beside it prove (it would start empty or wrong).</summary>
    public const int DataRefused = 65;

    /// <summary>EX_SOFTWARE: an unexpected failure (a bug); the exception is printed whole.</summary>
    public const int InternalError = 70;

    /// <summary>EX_TEMPFAIL: the data folder, the HTTP address or the NBD address is in use by another process.</summary>
    public const int InUse = 75;

    /// <summary>EX_CONFIG: a configuration value is invalid or refused (e.g. a public address without API keys).</summary>
    public const int Configuration = 78;
}
