"""The attribute values generated articles and customers take, after the H&M release's own."""

INDEX_GROUPS = ["Ladieswear", "Menswear", "Baby/Children", "Sport", "Divided"]
# product type -> product group
PRODUCT_TYPES = {
    "Trousers": "Garment Lower body",
    "Shorts": "Garment Lower body",
    "Skirt": "Garment Lower body",
    "Dress": "Garment Full body",
    "Jumpsuit/Playsuit": "Garment Full body",
    "T-shirt": "Garment Upper body",
    "Sweater": "Garment Upper body",
    "Blouse": "Garment Upper body",
    "Shirt": "Garment Upper body",
    "Jacket": "Garment Upper body",
    "Hoodie": "Garment Upper body",
    "Vest top": "Garment Upper body",
    "Bra": "Underwear",
    "Underwear bottom": "Underwear",
    "Socks": "Socks & Tights",
    "Sneakers": "Shoes",
    "Boots": "Shoes",
    "Bag": "Accessories",
    "Hat/beanie": "Accessories",
    "Earring": "Accessories",
}
COLOURS = [
    ("Black", "Dark", "Black"),
    ("White", "Light", "White"),
    ("Dark Blue", "Dark", "Blue"),
    ("Light Blue", "Light", "Blue"),
    ("Grey", "Medium", "Grey"),
    ("Beige", "Light", "Beige"),
    ("Red", "Bright", "Red"),
    ("Pink", "Light", "Pink"),
    ("Dark Green", "Dark", "Green"),
    ("Yellow", "Bright", "Yellow"),
    ("Orange", "Bright", "Orange"),
    ("Khaki green", "Medium Dusty", "Khaki green"),
]
APPEARANCES = ["Solid", "Stripe", "All over pattern", "Melange", "Denim", "Check", "Lace", "Placement print"]
GARMENT_GROUPS = [
    "Jersey Basic",
    "Jersey Fancy",
    "Knitwear",
    "Trousers",
    "Blouses",
    "Dresses Ladies",
    "Outdoor",
    "Shoes",
    "Accessories",
    "Under-, Nightwear",
    "Trousers Denim",
    "Special Offers",
]
ADJECTIVES = [
    "Ribbed",
    "Relaxed",
    "Slim",
    "Oversized",
    "Cropped",
    "Soft",
    "Classic",
    "Wide",
    "Fitted",
    "Light",
]
CLUB = ["ACTIVE", "PRE-CREATE", "LEFT CLUB"]
NEWS = ["NONE", "Regularly", "Monthly"]
