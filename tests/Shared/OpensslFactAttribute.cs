namespace BlockMirror.Tests.Shared;

/// <summary>
/// A fact that makes its certificates with openssl (<see cref="TestCertificates"/>): skipped, saying
/// so, where openssl is not installed, unless BLOCKMIRROR_REQUIRE_INTEROP=1 (CI), where it runs and fails.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = false)]
public sealed class OpensslFactAttribute : FactAttribute
{
    public OpensslFactAttribute()
    {
        if (!TestCertificates.Available && Environment.GetEnvironmentVariable("BLOCKMIRROR_REQUIRE_INTEROP") != "1")
            Skip = "openssl not installed (apt-get install openssl); set BLOCKMIRROR_REQUIRE_INTEROP=1 to make it a failure";
    }
}
