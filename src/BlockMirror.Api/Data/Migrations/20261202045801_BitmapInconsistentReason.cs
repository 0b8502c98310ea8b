using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace BlockMirror.Api.Data.Migrations
{
    /// <inheritdoc />
    public partial class BitmapInconsistentReason : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<string>(
                name: "InconsistentReason",
                table: "bitmaps",
                type: "TEXT",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "InconsistentReason",
                table: "bitmaps");
        }
    }
}
