using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace BlockMirror.Api.Data.Migrations
{
    /// <inheritdoc />
    public partial class JobHistory : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "Outcome",
                table: "jobs",
                type: "TEXT",
                nullable: true);

            // Jobs concluded before outcomes were recorded: told by their error, as RestoredJob.RecordedOutcome
            // does (every force cancel ends with ECANCELED's sentence; a soft cancel reads as completed).
            migrationBuilder.Sql("""
                UPDATE jobs SET Outcome = CASE
                    WHEN Error IS NULL THEN 'completed'
                    WHEN Error = 'Operation canceled' THEN 'cancelled'
                    ELSE 'failed' END
                WHERE Status = 'concluded';
                """);

            migrationBuilder.CreateIndex(
                name: "IX_jobs_Status_FinishedAt",
                table: "jobs",
                columns: new[] { "Status", "FinishedAt" });
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropIndex(
                name: "IX_jobs_Status_FinishedAt",
                table: "jobs");

            migrationBuilder.DropColumn(
                name: "Outcome",
                table: "jobs");
        }
    }
}
