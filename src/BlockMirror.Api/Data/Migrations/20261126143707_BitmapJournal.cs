using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace BlockMirror.Api.Data.Migrations
{
    /// <inheritdoc />
    public partial class BitmapJournal : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<long>(
                name: "ImageInode",
                table: "bitmaps",
                type: "INTEGER",
                nullable: true);

            migrationBuilder.AddColumn<long>(
                name: "JournalSeq",
                table: "bitmaps",
                type: "INTEGER",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "ImageInode",
                table: "bitmaps");

            migrationBuilder.DropColumn(
                name: "JournalSeq",
                table: "bitmaps");
        }
    }
}
